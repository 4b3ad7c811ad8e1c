-- cancel_batch: O(1) on the batch row. Pending rows are never claimed again (the claim
-- joins on cancelling_at); sweep_cancelled turns them canceled in bounded chunks and
-- daemons abort their in-flight rows (batches_to_abort). A batch with nothing unsettled
-- (finished, or already cancelled/expired, or past its window) is left unchanged.
-- Parameters: id, owner, now.
UPDATE batches b
SET cancelling_at = %(now)s
WHERE b.id = %(id)s
  AND b.owner = %(owner)s
  AND b.cancelling_at IS NULL
  AND b.expired_at IS NULL
  AND b.expires_at > %(now)s
  AND b.frozen_completed IS NULL
  AND EXISTS (
      SELECT 1 FROM requests r
      WHERE r.batch_id = b.id AND r.state IN ('pending', 'claimed', 'processing')
  )
RETURNING b.id
