-- batch_trouble: what holds one batch back, for its progress line (core/trouble.py).
-- Run every few seconds on batches of millions of rows, so every part is bounded:
--   waiting: the pending rows whose last attempt failed and that are due later, and of
--     those the ones last answered 429; counted up to cap rows of requests_claim_retry
--     (which holds exactly the pending rows after an attempt).
--   retry: the retry row due last (the one scheduled last), one backward index read of
--     requests_claim_retry per model of the batch.
--   failure: the failed row that finished last, among the batch's latest `recent` error
--     rows read backwards from requests_errors (a cancelled batch's canceled rows do not
--     make it read them all).
-- Parameters: batch_id, models (the batch's, text[]), now, cap, recent, body_prefix.
-- Returns one row. Locking: none.
WITH waiting AS (
    SELECT count(*) AS waiting,
           count(*) FILTER (WHERE w.response_status = 429) AS rate_limited
    FROM (
        SELECT r.response_status
        FROM requests r
        WHERE r.batch_id = %(batch_id)s
          AND r.state = 'pending'
          AND r.attempts > r.budget_base
          AND r.not_before > %(now)s
        LIMIT %(cap)s
    ) w
), retry AS (
    SELECT x.failure_reason, x.response_status, x.failure_message, x.body
    FROM unnest(%(models)s::text[]) AS m (model)
    CROSS JOIN LATERAL (
        SELECT r.not_before, r.line_number, r.failure_reason, r.response_status,
               r.failure_message, left(r.response_body, %(body_prefix)s) AS body
        FROM requests r
        WHERE r.batch_id = %(batch_id)s
          AND r.model = m.model
          AND r.state = 'pending'
          AND r.attempts > r.budget_base
        ORDER BY r.not_before DESC, r.line_number DESC
        LIMIT 1
    ) x
    ORDER BY x.not_before DESC, x.line_number DESC
    LIMIT 1
), failure AS (
    SELECT e.failure_reason, e.response_status, e.failure_message,
           left(e.response_body, %(body_prefix)s) AS body
    FROM (
        SELECT r.state, r.finished_at, r.line_number, r.failure_reason, r.response_status,
               r.failure_message, r.response_body
        FROM requests r
        WHERE r.batch_id = %(batch_id)s
          AND r.state IN ('failed', 'canceled')
        ORDER BY r.finished_at DESC, r.line_number DESC
        LIMIT %(recent)s
    ) e
    WHERE e.state = 'failed'
    ORDER BY e.finished_at DESC, e.line_number DESC
    LIMIT 1
)
SELECT w.waiting, w.rate_limited,
       r.failure_reason AS retry_reason, r.response_status AS retry_status,
       r.failure_message AS retry_message, r.body AS retry_body,
       f.failure_reason AS failure_reason, f.response_status AS failure_status,
       f.failure_message AS failure_message, f.body AS failure_body
FROM waiting w
LEFT JOIN retry r ON true
LEFT JOIN failure f ON true
