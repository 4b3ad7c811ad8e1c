-- daemon_register: a daemon announces itself (or comes back after being declared dead).
-- Parameters: id, hostname, pid, version, now, config (jsonb).
INSERT INTO daemons (id, hostname, pid, version, status, started_at, heartbeat_at, config)
VALUES (%(id)s, %(hostname)s, %(pid)s, %(version)s, 'running', %(now)s, %(now)s, %(config)s)
ON CONFLICT (id) DO UPDATE
SET status = 'running', heartbeat_at = excluded.heartbeat_at, stopped_at = NULL
