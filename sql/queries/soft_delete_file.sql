-- soft_delete_file: mark a file deleted; O(1), never cascades through its rows.
-- Parameters: id, owner, now.
UPDATE files SET deleted_at = %(now)s
WHERE id = %(id)s AND owner = %(owner)s AND deleted_at IS NULL
RETURNING id
