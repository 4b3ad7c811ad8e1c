-- live_daemons: how many daemons run against this database (status running, heartbeat
-- not stale), so a client waiting on a batch can say when nothing will work on it.
-- Parameter: stale_before. Uses daemons_running_heartbeat. Locking: none.
SELECT count(*) AS n
FROM daemons
WHERE status = 'running' AND heartbeat_at >= %(stale_before)s
