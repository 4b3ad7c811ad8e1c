-- purge_daemons: delete at most `limit` daemons rows stopped or dead before
-- `stopped_before` (their budget leases go with them, ON DELETE CASCADE).
-- Parameters: stopped_before, limit. Returns the ids. Uses daemons_stopped (0013).
WITH doomed AS (
    SELECT id FROM daemons
    WHERE status <> 'running' AND stopped_at < %(stopped_before)s
    ORDER BY stopped_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
DELETE FROM daemons d
USING doomed
WHERE d.id = doomed.id
RETURNING d.id
