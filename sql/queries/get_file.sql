-- get_file: one live file of one owner (another owner's file is not found).
-- Parameters: id, owner.
SELECT id, owner, filename, purpose, bytes, line_count, models, batch_id, created_at,
       expires_at
FROM files
WHERE id = %(id)s AND owner = %(owner)s AND deleted_at IS NULL
