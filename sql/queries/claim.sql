-- claim: due pending requests for many models in one statement; claim and start are
-- one write (state goes straight to processing with started_at), so the HTTP call is
-- sent only after the start is durable.
-- Parameters: daemon_id, now, models (text[]), slots (int[]): at most slots[i] rows of
-- models[i]; the daemon asks only for slots it can start at once.
-- Returns each row as the claim left it (the request the daemon holds, whose results
-- record_results.sql writes as a compare-and-set) and its template; claimed_at and
-- started_at are not returned: the claim sets both to now, which the caller has.
-- Order: earliest batch deadline, then batch age (uuid7), then line (see Cost below).
-- Locking: FOR UPDATE OF r SKIP LOCKED in each read of requests (the locking read itself,
-- never a separate CTE), so concurrent daemons skip each other's rows.
-- Cost (issue 11, item 6; migration 0005): per model, the claim walks the batches that may
-- be claimed (batches_claimable: not cancelled, expired or frozen; deadline not passed) in
-- deadline order and stops once it has `slots` rows, so rows of a cancelled or expired
-- batch that no sweep has reached yet are never visited. Per batch it reads two indexes:
-- requests_claim_fresh (attempts = budget_base: no attempt of this budget yet) in line
-- order, and requests_claim_retry (attempts > budget_base: pending again after an attempt)
-- by not_before, up to now, so rows backing off are never visited either. Each gives at
-- most `slots` rows; their union is taken in line order. So the order is exact (earliest
-- deadline, batch age, line) except within one batch with more than `slots` retries due at
-- once, which are taken earliest-due first. Before: 140,000 such rows at the front of one
-- index cost every claim 130-190 ms (2,000,000: see docs/performance.md, P7).
-- The walk relies on a nested loop keeping the order of its outer side: the batches come
-- from a subquery with its own ORDER BY (never pulled up) and the rows of each batch from
-- one with its own ORDER BY and LIMIT; no ORDER BY above them, which could make the
-- planner read every batch before sorting. The last batch visited may lock up to twice
-- `slots` rows more than are claimed (its two reads, past the limit) until the claim
-- commits; concurrent daemons skip them meanwhile.
-- Batches of other models are read and passed over (b.models), so a model with nothing to
-- claim reads every claimable batch once: a page or so each.
-- A row's batch_expires_at is its batch's expires_at (create and retry keep them equal),
-- so the order and the deadline check read the batch row.
-- A lookup per batch, not a join of the backlog: before the first ANALYZE of a large new
-- backlog the planner put a join's batch first, read the batch's every pending row and
-- sorted them (477 ms for 16 rows of 1,000,000); per-batch reads in index order need no
-- estimate to stop after `slots` rows.
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
        SELECT x.id
        FROM (
            SELECT b.id
            FROM batches b
            WHERE b.frozen_completed IS NULL
              AND b.cancelling_at IS NULL
              AND b.expired_at IS NULL
              AND b.expires_at > %(now)s
              AND c.model = ANY (b.models)
            ORDER BY b.expires_at, b.id
        ) b
        CROSS JOIN LATERAL (
            SELECT u.id
            FROM (
                SELECT f.id, f.line_number
                FROM (
                    SELECT r.id, r.line_number
                    FROM requests r
                    WHERE r.state = 'pending'
                      AND r.attempts = r.budget_base
                      AND r.batch_id = b.id
                      AND r.model = c.model
                      AND r.not_before <= %(now)s
                    ORDER BY r.line_number
                    LIMIT c.slots
                    FOR UPDATE OF r SKIP LOCKED
                ) f
                UNION ALL
                SELECT w.id, w.line_number
                FROM (
                    SELECT r.id, r.line_number
                    FROM requests r
                    WHERE r.state = 'pending'
                      AND r.attempts > r.budget_base
                      AND r.batch_id = b.id
                      AND r.model = c.model
                      AND r.not_before <= %(now)s
                    ORDER BY r.not_before, r.line_number
                    LIMIT c.slots
                    FOR UPDATE OF r SKIP LOCKED
                ) w
            ) u
            ORDER BY u.line_number
            LIMIT c.slots
        ) x
        LIMIT c.slots
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
              r.file_id, r.line_number, r.not_before
)
SELECT c.id, c.batch_id, c.attempts, c.budget_base, c.model, c.batch_expires_at,
       c.not_before,
       t.custom_id, t.endpoint, t.method, t.path, t.body, t.api_key
FROM claimed c
JOIN request_templates t ON t.file_id = c.file_id AND t.line_number = c.line_number
