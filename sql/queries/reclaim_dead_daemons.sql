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
    -- spent: no attempt left, so the row ends failed instead of pending
    SELECT r.id, r.attempts - r.budget_base >= %(max_attempts)s::int AS spent
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
SET state = CASE WHEN victims.spent THEN 'failed' ELSE 'pending' END,
    -- failed (the table's fail): the owner, claim and start of the lost attempt stay;
    -- pending (the table's reclaim): they are cleared and the row is due now.
    daemon_id = CASE WHEN victims.spent THEN r.daemon_id END,
    claimed_at = CASE WHEN victims.spent THEN r.claimed_at END,
    started_at = CASE WHEN victims.spent THEN r.started_at END,
    finished_at = CASE WHEN victims.spent THEN %(now)s::timestamptz END,
    not_before = CASE WHEN victims.spent THEN r.not_before ELSE %(now)s::timestamptz END,
    failure_reason = 'lost',
    failure_message = 'the daemon running this request stopped without recording a result'
FROM victims
WHERE r.id = victims.id
RETURNING r.id, r.state, (SELECT count(*) FROM marked) AS daemons_marked
