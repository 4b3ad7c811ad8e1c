-- purge_delete_templates: delete at most `limit` templates of a deleted file that no
-- batch with stored requests reads, after line `after`. Keyset on the primary key.
-- Parameters: file_id, after, limit. Returns the lines deleted.
WITH chunk AS (
    SELECT file_id, line_number FROM request_templates
    WHERE file_id = %(file_id)s AND line_number > %(after)s
    ORDER BY line_number
    LIMIT %(limit)s
)
DELETE FROM request_templates t
USING chunk
WHERE t.file_id = chunk.file_id AND t.line_number = chunk.line_number
RETURNING t.line_number
