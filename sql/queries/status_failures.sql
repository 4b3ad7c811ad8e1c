-- status_failures: the last `limit` failed requests of the given batches, newest first,
-- with the first 200 characters of their message.
-- Parameters: batch_ids, limit. Per batch a backward scan of requests_errors reads at
-- most `limit` failures (and the canceled rows among them), then the newest of all.
SELECT f.id, f.batch_id, f.model, f.finished_at, f.response_status, f.failure_reason,
       f.failure_message
FROM unnest(%(batch_ids)s::uuid[]) AS b(id)
CROSS JOIN LATERAL (
    SELECT r.id, r.batch_id, r.model, r.finished_at, r.response_status, r.failure_reason,
           left(r.failure_message, 200) AS failure_message
    FROM requests r
    WHERE r.batch_id = b.id AND r.state = 'failed'
    ORDER BY r.finished_at DESC, r.id DESC
    LIMIT %(limit)s
) AS f
ORDER BY f.finished_at DESC, f.id DESC
LIMIT %(limit)s
