-- fold_batch_state_counts: once a batch is frozen, its count shards become one row per
-- state (shard 0), so a finished batch keeps a handful of rows in batch_state_counts
-- (they still count a later retry or late success, which the triggers add as usual).
-- Parameters: id. Runs right after freeze_batch, in its transaction: the batch row is
-- locked before its counter rows, the order every writer takes them in.
-- Locking: the batch's other shards in (state, shard) order, then its shard 0 rows in
-- state order. A writer holds rows of its one shard, taken in state order, so neither
-- side can hold a row the other needs to get past its wait (0002_batch_state_counts.sql).
WITH locked AS (
    SELECT state, shard
    FROM batch_state_counts
    WHERE batch_id = %(id)s AND shard <> 0
    ORDER BY state, shard
    FOR UPDATE
), folded AS (
    DELETE FROM batch_state_counts c
    USING locked l
    WHERE c.batch_id = %(id)s AND c.state = l.state AND c.shard = l.shard
    RETURNING c.state, c.n
)
INSERT INTO batch_state_counts AS c (batch_id, state, shard, n)
SELECT %(id)s, state, 0, sum(n)
FROM folded
GROUP BY state
ORDER BY state
ON CONFLICT (batch_id, state, shard) DO UPDATE SET n = c.n + excluded.n
