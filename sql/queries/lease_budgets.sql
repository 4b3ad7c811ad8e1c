-- lease_budgets: take or keep this daemon's leases on the scopes it sends to, drop the
-- others it holds, and drop the leases of daemons that are no longer running or whose
-- heartbeat is stale. The holders are read by budget_holders.sql in the same
-- transaction (a data-modifying CTE's rows are not visible to its own statement).
-- Parameters: daemon_id, scopes (text[]), now, stale_before.
WITH taken AS (
    INSERT INTO budget_leases (scope, daemon_id, since)
    SELECT s.scope, %(daemon_id)s, %(now)s
    FROM unnest(%(scopes)s::text[]) AS s (scope)
    ON CONFLICT (scope, daemon_id) DO NOTHING
)
DELETE FROM budget_leases l
WHERE (l.daemon_id = %(daemon_id)s AND NOT l.scope = ANY (%(scopes)s::text[]))
   OR l.daemon_id IN (
        SELECT d.id FROM daemons d
        WHERE d.id <> %(daemon_id)s
          AND (d.status <> 'running' OR d.heartbeat_at < %(stale_before)s)
   )
