-- set_result_file_sizes: store the output and error file sizes of a frozen batch, computed
-- for (version, frozen_completed). Guarded by both in the statement that writes, so a
-- size computed before a retry or a repair of the frozen counts never lands; a later
-- read then finds the key stale and computes it again.
-- Parameters: id, version, completed, output_bytes, error_bytes.
UPDATE batches
SET output_bytes = %(output_bytes)s,
    error_bytes = %(error_bytes)s,
    sized_version = %(version)s,
    sized_completed = %(completed)s
WHERE id = %(id)s
  AND version = %(version)s
  AND frozen_completed = %(completed)s
