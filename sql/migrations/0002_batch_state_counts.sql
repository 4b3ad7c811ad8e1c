-- 0002_batch_state_counts: per-batch, per-state request counts kept by the writes, so the
-- status of a live batch reads a few dozen rows instead of counting its requests (P7).
--
-- Append-only: once shipped, this file is never edited (see 0001_initial.sql).
--
-- Theory of operation: statement-level AFTER triggers on requests read the statement's
-- transition tables (every row it inserted, updated or deleted, data-modifying CTEs
-- included: PostgreSQL merges those into one firing per table and event), net the
-- per-(batch, state) deltas and add them to batch_state_counts. Every write to requests
-- is counted, whichever query makes it, so no query has to remember to keep the counts.
-- A batch's count of a state is the sum of its shards (count_batch_requests.sql).
--
-- Shards: a statement adds its deltas to the rows of one shard, pg_backend_pid() % 16, so
-- writers on different connections rarely touch the same rows. A row stays locked until
-- its writer commits, commit included (the WAL flush): with one row per (batch, state),
-- every claim and result flush of a batch queued behind the previous one's commit, and a
-- few threads claiming and flushing one batch lost about 40% of their throughput to it
-- (measured in docs/performance.md, P7).
-- fold_batch_state_counts.sql folds the shards of a batch into shard 0 when it freezes.
--
-- Locking: a statement takes its counter rows in (batch_id, state) order within its one
-- shard, at the end of the statement, after its own row locks; a transaction that locks
-- a batch row does so before any counter row of that batch. So two transactions cannot
-- wait for each other's counter rows in a cycle.

-- Writers wait (they cannot slip between the backfill's snapshot and the triggers); the
-- lock is the one CREATE TRIGGER takes anyway, taken first so the intent is explicit.
LOCK TABLE requests IN SHARE ROW EXCLUSIVE MODE;

CREATE TABLE batch_state_counts (
    batch_id uuid     NOT NULL REFERENCES batches (id) ON DELETE CASCADE,
    state    text     NOT NULL,
    shard    smallint NOT NULL,
    -- A shard's part of the count, which may be negative (a request counted as pending in
    -- one shard is claimed in another); the sum over shards is the count. Zero rows stay:
    -- the state is likely entered again.
    n        integer  NOT NULL,
    PRIMARY KEY (batch_id, state, shard)
-- room on each page for HOT updates: the rows of a live batch change on every claim
) WITH (fillfactor = 50);

-- The three functions are one upsert over different deltas (so one lock order).
CREATE FUNCTION batch_state_counts_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO batch_state_counts AS c (batch_id, state, shard, n)
    SELECT batch_id, state, pg_backend_pid() % 16, count(*)
    FROM new_rows
    GROUP BY batch_id, state
    ORDER BY batch_id, state  -- lock order (see the header)
    ON CONFLICT (batch_id, state, shard) DO UPDATE SET n = c.n + excluded.n;
    RETURN NULL;
END
$$;

-- Rows whose state did not change add -1 and +1 to the same key and drop out in the
-- HAVING, so updates that leave the state alone (e.g. retry_batch moving deadlines)
-- touch no counter row.
CREATE FUNCTION batch_state_counts_update() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO batch_state_counts AS c (batch_id, state, shard, n)
    SELECT batch_id, state, pg_backend_pid() % 16, sum(delta)
    FROM (
        SELECT batch_id, state, -1 AS delta FROM old_rows
        UNION ALL
        SELECT batch_id, state, 1 AS delta FROM new_rows
    ) d
    GROUP BY batch_id, state
    HAVING sum(delta) <> 0
    ORDER BY batch_id, state  -- lock order (see the header)
    ON CONFLICT (batch_id, state, shard) DO UPDATE SET n = c.n + excluded.n;
    RETURN NULL;
END
$$;

CREATE FUNCTION batch_state_counts_delete() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO batch_state_counts AS c (batch_id, state, shard, n)
    SELECT batch_id, state, pg_backend_pid() % 16, -count(*)
    FROM old_rows
    GROUP BY batch_id, state
    ORDER BY batch_id, state  -- lock order (see the header)
    ON CONFLICT (batch_id, state, shard) DO UPDATE SET n = c.n + excluded.n;
    RETURN NULL;
END
$$;

-- DELETE, not TRUNCATE: "TRUNCATE batches, requests CASCADE" truncates batch_state_counts
-- in the same statement, and a nested TRUNCATE of it would be refused.
CREATE FUNCTION batch_state_counts_truncate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM batch_state_counts;
    RETURN NULL;
END
$$;

-- One trigger per event: PostgreSQL allows transition tables only on single-event triggers.
CREATE TRIGGER requests_count_insert AFTER INSERT ON requests
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION batch_state_counts_insert();
CREATE TRIGGER requests_count_update AFTER UPDATE ON requests
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION batch_state_counts_update();
CREATE TRIGGER requests_count_delete AFTER DELETE ON requests
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION batch_state_counts_delete();
CREATE TRIGGER requests_count_truncate AFTER TRUNCATE ON requests
    FOR EACH STATEMENT EXECUTE FUNCTION batch_state_counts_truncate();

-- Backfill under the lock above, into shard 0: the triggers count every write from here on.
INSERT INTO batch_state_counts (batch_id, state, shard, n)
SELECT batch_id, state, 0, count(*)
FROM requests
GROUP BY batch_id, state;
