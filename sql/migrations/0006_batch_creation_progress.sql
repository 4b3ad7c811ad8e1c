-- 0006_batch_creation_progress: a batch's requests are created in bounded chunks.
--
-- One INSERT ... SELECT of every request ran into the 30 s statement timeout at about a
-- million lines. create_batch now inserts the batch row first and its requests in chunks of
-- line numbers, each its own transaction (create_batch_requests.sql), and records here how
-- far it got: created_through is the last line number whose request exists while the batch
-- is being created, NULL once every request exists. A creation cut short (the process died)
-- is resumed from there by a repeated create_batch or by any daemon's maintenance.
-- creation_progress_at is when the last chunk was written (the database's clock, like
-- every time compared across processes): maintenance resumes only a creation that has not
-- moved for stale_after, so a live creator is left alone without any session-level lock
-- (which PgBouncer's transaction pooling would break).
-- NULL for every batch created before this migration: their requests all exist.
-- Nullable columns without a default: adding them rewrites nothing.

ALTER TABLE batches
    ADD COLUMN created_through integer,
    ADD COLUMN creation_progress_at timestamptz;

-- The batches still being created, found by maintenance (pick_unfinished_creation.sql).
CREATE INDEX batches_creating ON batches (id) WHERE created_through IS NOT NULL;
