-- first_path_mismatch: the first template of a file whose path is not the batch's
-- endpoint (every line's url must equal it). Parameters: file_id, endpoint.
-- Scans the file's templates once, in line order, stopping at the first mismatch.
SELECT line_number, path
FROM request_templates
WHERE file_id = %(file_id)s AND path <> %(endpoint)s
ORDER BY line_number
LIMIT 1
