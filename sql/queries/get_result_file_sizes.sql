-- get_result_file_sizes: what the output and error file sizes of some batches depend on,
-- and the sizes stored so far (see migration 0007).
-- Parameters: batch_ids (uuid[]). Locking: none.
SELECT id, version, frozen_completed, sized_version, sized_completed, output_bytes,
       error_bytes
FROM batches
WHERE id = ANY(%(batch_ids)s::uuid[])
