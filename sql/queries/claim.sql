-- claim: at most n due pending requests of each (batch, model) pair the caller allots, in
-- one statement; claim and start are one write (state goes straight to processing with
-- started_at), so the HTTP call is sent only after the start is durable.
-- Parameters: daemon_id, now, and the allotments as three arrays of one length:
-- batch_ids (uuid[]), models (text[]), counts (int[]): at most counts[i] rows of
-- models[i] in batch batch_ids[i]. The caller (the claim loop's allocator) decides how
-- the daemon's free slots are shared between batches; it sends each pair once and asks
-- only for slots it can start at once.
-- Returns each row as the claim left it (the request the daemon holds, whose results
-- record_results.sql writes as a compare-and-set) and its template; claimed_at and
-- started_at are not returned: the claim sets both to now, which the caller has.
-- Only from batches still claimable: each pair's batch row is read by primary key with
-- the predicate of batches_claimable (not frozen, cancelled or expired; deadline not
-- passed), so a batch cancelled or expired since the caller's snapshot
-- (claimable_batches.sql) gives nothing, and rows of one no sweep has reached yet are
-- never visited.
-- Order within a pair: per batch it reads two indexes (migration 0005):
-- requests_claim_fresh (attempts = budget_base: no attempt of this budget yet) in line
-- order, and requests_claim_retry (attempts > budget_base: pending again after an attempt)
-- by not_before, up to now, so rows backing off are never visited. Each gives at most n
-- rows; their union is taken in line order. So the order is the line order, except
-- within one batch with more than n retries due at once, which are taken earliest-due
-- first. Between pairs there is no order: each is bounded by its own n.
-- Locking: FOR UPDATE OF r SKIP LOCKED in each read of requests (the locking read itself,
-- never a separate CTE), so concurrent daemons skip each other's rows. A pair may lock up
-- to twice n rows more than it claims (its two reads, past the limit) until the claim
-- commits; concurrent daemons skip them meanwhile. Batch rows are not locked: a cancel or
-- expiry committed after this read is applied by the cancel watcher and the sweep, as
-- for rows claimed before it.
-- Cost: per pair, one primary-key read of batches and two index reads of at most n rows;
-- never the backlog (P7; before migration 0005, 140,000 unclaimable rows at the front of
-- one index cost every claim 130-190 ms). The rows of a pair come from a subquery with
-- its own ORDER BY and LIMIT, so no estimate is needed to stop after n rows (before the
-- first ANALYZE of a large new backlog, a join of the backlog read a batch's every
-- pending row and sorted them: 477 ms for 16 rows of 1,000,000).
-- Plan shape: the planner cannot see LIMIT a.n, so it guesses picked at a tenth of the
-- table; joined directly, that guess turned the UPDATE and the template join into hash
-- joins over full sequential scans (165 ms for 16 rows with 400k pending). Hence the
-- UPDATE takes ids through = ANY (ARRAY(...)) (estimated at 10 rows: primary-key
-- lookups) and templates are joined to what it returns (primary-key lookups per row).
WITH allotted AS (
    SELECT a.batch_id, a.model, a.n
    FROM unnest(%(batch_ids)s::uuid[], %(models)s::text[], %(counts)s::int[])
        AS a (batch_id, model, n)
    WHERE a.n > 0
), picked AS (
    SELECT p.id
    FROM allotted a
    CROSS JOIN LATERAL (
        SELECT x.id
        FROM (
            SELECT b.id
            FROM batches b
            WHERE b.id = a.batch_id
              AND b.frozen_completed IS NULL
              AND b.cancelling_at IS NULL
              AND b.expired_at IS NULL
              AND b.expires_at > %(now)s
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
                      AND r.model = a.model
                      AND r.not_before <= %(now)s
                    ORDER BY r.line_number
                    LIMIT a.n
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
                      AND r.model = a.model
                      AND r.not_before <= %(now)s
                    ORDER BY r.not_before, r.line_number
                    LIMIT a.n
                    FOR UPDATE OF r SKIP LOCKED
                ) w
            ) u
            ORDER BY u.line_number
            LIMIT a.n
        ) x
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
