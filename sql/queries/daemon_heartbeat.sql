-- daemon_heartbeat: refresh a running daemon's heartbeat. Returns no row when the
-- daemon was declared dead meanwhile: its rows were reclaimed, and it must re-register
-- (its late writes are fenced out by owner and attempt).
-- Parameters: id, now.
UPDATE daemons SET heartbeat_at = %(now)s
WHERE id = %(id)s AND status = 'running'
RETURNING id
