-- count_batch_requests: live per-state counts of unfrozen batches.
-- Parameters: batch_ids (uuid[]). Uses requests_batch_state (index-only when the
-- visibility map allows). Frozen batches are never passed here (lesson 7).
SELECT batch_id, state, count(*) AS n
FROM requests
WHERE batch_id = ANY(%(batch_ids)s::uuid[])
GROUP BY batch_id, state
