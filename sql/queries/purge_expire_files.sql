-- purge_expire_files: mark at most `limit` live files past their expires_at deleted
-- (deleted_at = expires_at), so they answer 404 and their content is purged next.
-- Parameters: now, limit. Returns the files marked. Locking: the chosen rows, SKIP LOCKED.
-- Uses files_expiring (0013).
WITH due AS (
    SELECT id FROM files
    WHERE deleted_at IS NULL AND expires_at IS NOT NULL AND expires_at <= %(now)s
    ORDER BY expires_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE files f SET deleted_at = f.expires_at
FROM due
WHERE f.id = due.id
RETURNING f.id
