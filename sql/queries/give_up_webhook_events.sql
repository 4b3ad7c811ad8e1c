-- give_up_webhook_events: events still unsent at the horizon (created before
-- created_before) and not leased now are given up: those of owners no daemon has a
-- webhook for, mostly (a delivery gives up its own events itself). Bounded by limit.
-- Parameters: now, created_before, limit. Returns the rows given up.
WITH stale AS (
    SELECT id
    FROM webhook_events
    WHERE delivered_at IS NULL
      AND given_up_at IS NULL
      AND next_attempt_at <= %(now)s
      AND created_at < %(created_before)s
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE webhook_events e
SET given_up_at = %(now)s,
    last_error = coalesce(e.last_error, 'not sent: no webhook configured for the owner'),
    claimed_by = NULL
FROM stale
WHERE e.id = stale.id
RETURNING e.id, e.owner, e.attempts
