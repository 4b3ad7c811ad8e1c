-- reclaim_timed_out: time-based fallback: rows in flight since before claimed_before
-- (request timeout plus a margin), whoever owns them, go back to pending (or failed,
-- reason lost, when the budget is spent). Parameters: now, claimed_before, limit,
-- max_attempts. Uses requests_in_flight_age.
WITH victims AS (
    -- spent: no attempt left, so the row ends failed instead of pending
    SELECT r.id, r.attempts - r.budget_base >= %(max_attempts)s::int AS spent
    FROM requests r
    WHERE r.state IN ('claimed', 'processing')
      AND r.claimed_at < %(claimed_before)s
    LIMIT %(limit)s
    FOR UPDATE OF r SKIP LOCKED
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
    failure_message = 'the request stayed in flight past its time limit'
FROM victims
WHERE r.id = victims.id
RETURNING r.id, r.state
