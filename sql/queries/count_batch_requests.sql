-- count_batch_requests: live per-state counts of unfrozen batches, as the writes keep them
-- in batch_state_counts (0002_batch_state_counts.sql): the sum of each state's shards, a
-- few dozen rows at most per batch however large it is (P7). Parameters: batch_ids
-- (uuid[]). Uses batch_state_counts_pkey. Locking: none. Frozen batches are never passed
-- here (lesson 7).
SELECT batch_id, state, sum(n) AS n
FROM batch_state_counts
WHERE batch_id = ANY(%(batch_ids)s::uuid[])
GROUP BY batch_id, state
