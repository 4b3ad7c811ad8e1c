-- pick_unfinished_creation: one batch whose requests are not all created and whose
-- creation has not moved since stale_before (its creator died, or stalled: a creator that
-- comes back only finds its next chunk written, as chunks are idempotent). The row lock is
-- held for the caller's transaction, in which it writes one chunk
-- (create_batch_requests.sql, which moves creation_progress_at on, so other daemons leave
-- the batch to this one); SKIP LOCKED passes over a batch whose chunk is being written.
-- Parameters: stale_before. Uses batches_creating.
SELECT id
FROM batches
WHERE created_through IS NOT NULL
  AND creation_progress_at < %(stale_before)s
ORDER BY id
LIMIT 1
FOR UPDATE SKIP LOCKED
