-- purge_pick_file: one deleted input file whose content is still stored and that no
-- unfinished batch reads (a running batch never loses its inputs), oldest deletion
-- first. `keep` is true while a batch whose requests are stored reads it: its results
-- name the templates' custom_ids, so those rows are blanked, not deleted.
-- Parameters: none. Locking: the file row, SKIP LOCKED (one purger per file); its
-- FOR UPDATE also conflicts with the key-share lock of a batch being created on it.
-- Uses files_to_purge and batches_input_file (0013).
SELECT f.id, f.purged_through,
       EXISTS (SELECT 1 FROM batches b
               WHERE b.input_file_id = f.id AND b.purged_at IS NULL) AS keep
FROM files f
WHERE f.purpose = 'batch' AND f.deleted_at IS NOT NULL AND f.purged_at IS NULL
  AND NOT EXISTS (SELECT 1 FROM batches b
                  WHERE b.input_file_id = f.id AND b.frozen_completed IS NULL)
ORDER BY f.deleted_at
LIMIT 1
FOR UPDATE OF f SKIP LOCKED
