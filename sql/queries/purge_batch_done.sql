-- purge_batch_done: a batch's requests are all deleted: stamp it, mark its output and
-- error files deleted (they answer 404), and let the purge of its input file, if that
-- was deleted and no other batch with stored requests reads it, delete the rows it kept.
-- Parameters: batch_id, input_file_id, output_file_id, error_file_id, now.
WITH b AS (
    UPDATE batches SET purged_at = %(now)s WHERE id = %(batch_id)s RETURNING id
), results AS (
    UPDATE files SET deleted_at = %(now)s
    WHERE id IN (%(output_file_id)s, %(error_file_id)s) AND deleted_at IS NULL
    RETURNING id
)
UPDATE files f SET purged_at = NULL, purged_through = 0
WHERE f.id = %(input_file_id)s AND f.deleted_at IS NOT NULL AND f.purged_at IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM batches o
                  WHERE o.input_file_id = f.id AND o.id <> %(batch_id)s
                    AND o.purged_at IS NULL)
