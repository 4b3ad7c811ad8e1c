-- budget_holders: per scope this daemon leases, how many live daemons hold it, and since
-- when this daemon does. Live: running, heartbeat not older than stale_before.
-- Parameters: daemon_id, scopes (text[]), stale_before.
SELECT l.scope,
       count(*) AS holders,
       max(l.since) FILTER (WHERE l.daemon_id = %(daemon_id)s) AS since
FROM budget_leases l
JOIN daemons d ON d.id = l.daemon_id
WHERE l.scope = ANY (%(scopes)s::text[])
  AND d.status = 'running'
  AND (d.heartbeat_at >= %(stale_before)s OR d.id = %(daemon_id)s)
GROUP BY l.scope
