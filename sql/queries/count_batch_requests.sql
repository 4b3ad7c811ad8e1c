-- count_batch_requests: live per-state counts of unfrozen batches, as the writes keep them
-- in batch_state_counts (0002_batch_state_counts.sql): the sum of each state's shards, a
-- few dozen rows at most per batch however large it is (P7). Parameters: batch_ids
-- (uuid[]). Uses batch_state_counts_pkey. Locking: none. Frozen batches are never passed
-- here: a terminal batch is read from its frozen counts in its row, never recounted.
-- A batch whose requests are still being created (create_batch_requests.sql works in
-- chunks) has a second 'pending' row: its lines past created_through, whose requests do
-- not exist yet, so its counts add up to its total meanwhile. The caller adds the two.
SELECT batch_id, state, sum(n) AS n
FROM batch_state_counts
WHERE batch_id = ANY(%(batch_ids)s::uuid[])
GROUP BY batch_id, state
UNION ALL
SELECT id AS batch_id, 'pending' AS state, (total - created_through)::bigint AS n
FROM batches
WHERE id = ANY(%(batch_ids)s::uuid[]) AND created_through IS NOT NULL
