-- error_kinds: the most frequent kinds of error of one batch, for its final summary
-- (core/trouble.py): among its latest `scan` failed and canceled rows (read backwards
-- from requests_errors, so a batch of millions of failures stays bounded), grouped by
-- reason and, for HTTP answers, status; each with its count and its latest row's
-- message and the first body_prefix characters of its body (found again by its
-- finished_at in requests_errors).
-- Parameters: batch_id, scan, top, body_prefix. Locking: none.
-- Columns: reason, status, n, scanned (the rows read, over every kind), message, body.
WITH kinds AS (
    SELECT l.reason, l.status, count(*) AS n, max(l.finished_at) AS last,
           sum(count(*)) OVER () AS scanned
    FROM (
        SELECT r.failure_reason AS reason,
               CASE WHEN r.failure_reason = 'http_status' THEN r.response_status END AS status,
               r.finished_at
        FROM requests r
        WHERE r.batch_id = %(batch_id)s
          AND r.state IN ('failed', 'canceled')
        ORDER BY r.finished_at DESC, r.line_number DESC
        LIMIT %(scan)s
    ) l
    GROUP BY l.reason, l.status
    ORDER BY n DESC, l.reason COLLATE "C", l.status NULLS FIRST
    LIMIT %(top)s
)
SELECT k.reason, k.status, k.n, k.scanned, x.failure_message AS message, x.body
FROM kinds k
CROSS JOIN LATERAL (
    SELECT r.failure_message, left(r.response_body, %(body_prefix)s) AS body
    FROM requests r
    WHERE r.batch_id = %(batch_id)s
      AND r.state IN ('failed', 'canceled')
      AND r.finished_at = k.last
      AND r.failure_reason = k.reason
      AND (k.reason <> 'http_status' OR r.response_status IS NOT DISTINCT FROM k.status)
    ORDER BY r.line_number DESC
    LIMIT 1
) x
ORDER BY k.n DESC, k.reason COLLATE "C", k.status NULLS FIRST
