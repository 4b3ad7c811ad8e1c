-- set_file_stats: record size, line count and distinct models once a file's templates
-- are all copied, in the same transaction as the copy.
-- Parameters: id, bytes, line_count, models (text[]).
UPDATE files
SET bytes = %(bytes)s, line_count = %(line_count)s, models = %(models)s
WHERE id = %(id)s
