-- claim_webhook_events: take up to limit due events of the owners this daemon has a
-- webhook for, oldest due first. Each claimed row counts the attempt, names this daemon
-- and is leased until lease_until (next_attempt_at), so no other daemon sends it
-- meanwhile; a daemon that dies mid-send leaves it due again when the lease ends.
-- Parameters: daemon_id, owners, now, lease_until, limit.
-- Locking: FOR UPDATE SKIP LOCKED on the rows picked (two daemons never pick one row).
WITH due AS (
    SELECT e.id
    FROM webhook_events e
    WHERE e.delivered_at IS NULL
      AND e.given_up_at IS NULL
      AND e.next_attempt_at <= %(now)s
      AND e.owner = ANY(%(owners)s::text[])
    ORDER BY e.next_attempt_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE webhook_events e
SET attempts = e.attempts + 1,
    claimed_by = %(daemon_id)s,
    next_attempt_at = %(lease_until)s
FROM due
WHERE e.id = due.id
RETURNING e.id, e.owner, e.type, e.batch_id, e.created_at, e.attempts
