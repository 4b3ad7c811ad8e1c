-- status_models: per model, the requests of the given batches in flight now, and those
-- that completed or failed since `since` (the status page's throughput).
-- Parameters: batch_ids (the batches unfinished or finished since `since`: no other can
-- have such rows), since. Each part reads its partial index per batch: requests_unsettled
-- (0014) for in flight, requests_output and requests_errors (batch_id, finished_at) for the
-- rest.
SELECT model,
       count(*) FILTER (WHERE kind = 'in_flight')::integer AS in_flight,
       count(*) FILTER (WHERE kind = 'completed')::integer AS completed,
       count(*) FILTER (WHERE kind = 'failed')::integer AS failed
FROM (
    SELECT model, 'in_flight' AS kind
    FROM requests
    WHERE batch_id = ANY(%(batch_ids)s::uuid[]) AND state IN ('claimed', 'processing')
    UNION ALL
    SELECT model, 'completed'
    FROM requests
    WHERE batch_id = ANY(%(batch_ids)s::uuid[]) AND state = 'completed'
      AND finished_at >= %(since)s
    UNION ALL
    SELECT model, 'failed'
    FROM requests
    WHERE batch_id = ANY(%(batch_ids)s::uuid[]) AND state = 'failed'
      AND finished_at >= %(since)s
) AS r
GROUP BY model
ORDER BY model
