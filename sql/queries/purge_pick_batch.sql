-- purge_pick_batch: one finished (frozen) batch whose requests are still stored and
-- that finished before `finished_before` (NULL: keep finished batches) or whose output
-- expired by `now`. Parameters: now, finished_before. Locking: the batch row, SKIP
-- LOCKED: one purger per batch, and a retry of it waits (then finds it purged).
-- Uses batches_finished_unpurged and batches_output_expiring (0013).
SELECT id, input_file_id, output_file_id, error_file_id
FROM batches
WHERE purged_at IS NULL AND frozen_completed IS NOT NULL
  AND (
      (%(finished_before)s::timestamptz IS NOT NULL
       AND coalesce(last_finished_at, created_at) < %(finished_before)s::timestamptz)
      OR (output_expires_at IS NOT NULL AND output_expires_at <= %(now)s)
  )
LIMIT 1
FOR UPDATE SKIP LOCKED
