-- count_webhook_outbox: events still to send for the owners given (the pending gauge).
-- Parameters: owners. Uses webhook_events_due.
SELECT count(*) AS n
FROM webhook_events
WHERE delivered_at IS NULL
  AND given_up_at IS NULL
  AND owner = ANY(%(owners)s::text[])
