-- reclaim_dead_daemons: in-flight rows of daemons that stopped heartbeating (or are
-- marked dead) go back to pending, a bounded chunk at a time. The attempt stays used:
-- a row whose budget is spent ends failed (reason lost), so a request that kills its
-- daemons cannot loop forever. Stale daemons are marked dead in a separate statement
-- (mark_dead below runs in the same transaction).
-- Parameters: now, stale_before, limit, max_attempts.
WITH dead AS (
    SELECT id FROM daemons
    WHERE status <> 'running' OR heartbeat_at < %(stale_before)s
), victims AS (
    SELECT r.id
    FROM requests r
    WHERE r.state IN ('claimed', 'processing')
      AND r.daemon_id IN (SELECT id FROM dead)
    LIMIT %(limit)s
    FOR UPDATE OF r SKIP LOCKED
), marked AS (
    UPDATE daemons SET status = 'dead', stopped_at = %(now)s
    WHERE status = 'running' AND heartbeat_at < %(stale_before)s
    RETURNING id
)
UPDATE requests r
SET state = CASE WHEN r.attempts - r.budget_base >= %(max_attempts)s::int
                 THEN 'failed' ELSE 'pending' END,
    daemon_id = NULL, claimed_at = NULL, started_at = NULL,
    finished_at = CASE WHEN r.attempts - r.budget_base >= %(max_attempts)s::int
                       THEN %(now)s::timestamptz END,
    failure_reason = 'lost',
    failure_message = 'the daemon running this request stopped without recording a result',
    not_before = %(now)s
FROM victims
WHERE r.id = victims.id
RETURNING r.id, r.state, (SELECT count(*) FROM marked) AS daemons_marked
