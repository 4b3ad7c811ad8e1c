-- daemon_stop: mark a daemon stopped after it released its rows.
-- Parameters: id, now.
UPDATE daemons SET status = 'stopped', stopped_at = %(now)s
WHERE id = %(id)s
