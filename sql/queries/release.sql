-- release: a daemon hands its in-flight rows back at once (graceful shutdown), with the
-- attempt refunded (budget_base + 1), so another daemon takes them without a lease wait.
-- Parameters: daemon_id, now, ids (uuid[] or null for all of this daemon's rows).
-- Uses requests_in_flight_owner.
UPDATE requests
SET state = 'pending', daemon_id = NULL, claimed_at = NULL, started_at = NULL,
    not_before = %(now)s, budget_base = budget_base + 1
WHERE daemon_id = %(daemon_id)s
  AND state IN ('claimed', 'processing')
  AND (%(ids)s::uuid[] IS NULL OR id = ANY(%(ids)s::uuid[]))
RETURNING id
