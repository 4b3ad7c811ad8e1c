-- claim: due pending requests for many models in one statement; claim and start are
-- one write (state goes straight to processing with started_at), so the HTTP call is
-- sent only after the start is durable.
-- Parameters: daemon_id, now, models (text[]), slots (int[]): at most slots[i] rows of
-- models[i]; the daemon asks only for slots it can start at once.
-- Order: earliest batch deadline, then batch age (uuid7), then line.
-- Locking: FOR UPDATE OF r SKIP LOCKED inside the LATERAL (the locking read itself,
-- never a separate CTE), so concurrent daemons skip each other's rows.
-- The LATERAL's predicate (state = 'pending' AND model = ...) and ORDER BY match
-- requests_claim; rows of cancelled or expired batches are filtered by the join and
-- leave the index once swept (lesson 6).
WITH capacity AS (
    SELECT c.model, c.slots
    FROM unnest(%(models)s::text[], %(slots)s::int[]) AS c (model, slots)
    WHERE c.slots > 0
), picked AS (
    SELECT p.id
    FROM capacity c
    CROSS JOIN LATERAL (
        SELECT r.id
        FROM requests r
        JOIN batches b ON b.id = r.batch_id
        WHERE r.state = 'pending'
          AND r.model = c.model
          AND r.not_before <= %(now)s
          AND r.batch_expires_at > %(now)s
          AND b.cancelling_at IS NULL
          AND b.expired_at IS NULL
        ORDER BY r.batch_expires_at, r.batch_id, r.line_number
        LIMIT c.slots
        FOR UPDATE OF r SKIP LOCKED
    ) p
)
UPDATE requests r
SET state = 'processing',
    daemon_id = %(daemon_id)s,
    claimed_at = %(now)s,
    started_at = %(now)s,
    attempts = r.attempts + 1
FROM picked, request_templates t
WHERE r.id = picked.id
  AND t.file_id = r.file_id
  AND t.line_number = r.line_number
RETURNING r.id, r.batch_id, r.attempts, r.budget_base, r.model, r.batch_expires_at,
          t.custom_id, t.endpoint, t.method, t.path, t.body, t.api_key
