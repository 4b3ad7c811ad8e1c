-- claim: due pending requests for many models in one statement; claim and start are
-- one write (state goes straight to processing with started_at), so the HTTP call is
-- sent only after the start is durable.
-- Parameters: daemon_id, now, models (text[]), slots (int[]): at most slots[i] rows of
-- models[i]; the daemon asks only for slots it can start at once.
-- Order: earliest batch deadline, then batch age (uuid7), then line.
-- Locking: FOR UPDATE OF r SKIP LOCKED inside the LATERAL (the locking read itself,
-- never a separate CTE), so concurrent daemons skip each other's rows.
-- The LATERAL's predicate (state = 'pending' AND model = ...) and ORDER BY match
-- requests_claim; rows of cancelled or expired batches are filtered by a lookup of their
-- batch per row and leave the index once swept (lesson 6). A lookup, not a join: before
-- the first ANALYZE of a large new backlog the planner put a join's batch first, read the
-- batch's every pending row and sorted them (477 ms for 16 rows of 1,000,000); a
-- single-table scan in index order needs no estimate to stop after `slots` rows.
-- Plan shape: the planner cannot see LIMIT c.slots, so it guesses picked at a tenth of the
-- table; joined directly, that guess turned the UPDATE and the template join into hash
-- joins over full sequential scans (165 ms for 16 rows with 400k pending). Hence the
-- UPDATE takes ids through = ANY (ARRAY(...)) (estimated at 10 rows: primary-key
-- lookups) and templates are joined to what it returns (primary-key lookups per row).
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
        WHERE r.state = 'pending'
          AND r.model = c.model
          AND r.not_before <= %(now)s
          AND r.batch_expires_at > %(now)s
          AND (SELECT b.cancelling_at IS NULL AND b.expired_at IS NULL
               FROM batches b WHERE b.id = r.batch_id)
        ORDER BY r.batch_expires_at, r.batch_id, r.line_number
        LIMIT c.slots
        FOR UPDATE OF r SKIP LOCKED
    ) p
), claimed AS (
    UPDATE requests r
    SET state = 'processing',
        daemon_id = %(daemon_id)s,
        claimed_at = %(now)s,
        started_at = %(now)s,
        attempts = r.attempts + 1
    WHERE r.id = ANY (ARRAY(SELECT id FROM picked))
    RETURNING r.id, r.batch_id, r.attempts, r.budget_base, r.model, r.batch_expires_at,
              r.file_id, r.line_number
)
SELECT c.id, c.batch_id, c.attempts, c.budget_base, c.model, c.batch_expires_at,
       t.custom_id, t.endpoint, t.method, t.path, t.body, t.api_key
FROM claimed c
JOIN request_templates t ON t.file_id = c.file_id AND t.line_number = c.line_number
