-- notify: wake daemons listening on a channel (sent at commit, so listeners see the
-- rows). Parameters: channel, payload.
SELECT pg_notify(%(channel)s, %(payload)s)
