-- settle_webhook_event: what one send of an event came to. Delivered (a 2xx) lands
-- whoever sent it, while the event is not delivered yet (a slow sender whose lease ran
-- out still got it through). A failure lands only under this daemon's claim and attempt
-- (a later claim owns the row now): next_attempt_at set to try again, or given_up_at.
-- Parameters: id, daemon_id, attempts, delivered_at, next_attempt_at, given_up_at, error.
-- Returns the row when it landed.
UPDATE webhook_events
SET delivered_at = %(delivered_at)s,
    given_up_at = CASE WHEN %(delivered_at)s::timestamptz IS NULL
                       THEN %(given_up_at)s::timestamptz END,
    next_attempt_at = coalesce(%(next_attempt_at)s, next_attempt_at),
    last_error = coalesce(%(error)s, last_error),
    claimed_by = NULL
WHERE id = %(id)s
  AND delivered_at IS NULL
  AND (given_up_at IS NULL OR %(delivered_at)s::timestamptz IS NOT NULL)
  AND (%(delivered_at)s::timestamptz IS NOT NULL
       OR (claimed_by = %(daemon_id)s AND attempts = %(attempts)s))
RETURNING id
