-- purge_blank_templates: remove the content of at most `limit` templates of a deleted
-- file after line `after`, keeping custom_id, line and model (the results of a kept
-- batch name them): the body becomes '' and the API key NULL. Keyset on the primary key.
-- Parameters: file_id, after, limit. Returns the lines blanked.
WITH chunk AS (
    SELECT file_id, line_number FROM request_templates
    WHERE file_id = %(file_id)s AND line_number > %(after)s
    ORDER BY line_number
    LIMIT %(limit)s
)
UPDATE request_templates t SET body = '', api_key = NULL
FROM chunk
WHERE t.file_id = chunk.file_id AND t.line_number = chunk.line_number
RETURNING t.line_number
