-- stream_input: a page of an input file's templates in line order (keyset on line).
-- Parameters: file_id, after_line, limit. Uses the primary key.
SELECT line_number, custom_id, endpoint, method, path, model, body
FROM request_templates
WHERE file_id = %(file_id)s AND line_number > %(after_line)s
ORDER BY line_number
LIMIT %(limit)s
