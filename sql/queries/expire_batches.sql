-- expire_batches: stamp expired_at on batches past their window that still have
-- unsettled requests (a batch that finished in time stays completed).
-- Parameters: now. Uses batches_unfrozen. Returns each batch stamped (its id and owner:
-- the "expired" log line, fusillade/lifecycle.py).
UPDATE batches b
SET expired_at = b.expires_at
WHERE b.frozen_completed IS NULL
  AND b.cancelling_at IS NULL
  AND b.expired_at IS NULL
  AND b.expires_at <= %(now)s
  AND EXISTS (
      SELECT 1 FROM requests r
      WHERE r.batch_id = b.id AND r.state IN ('pending', 'claimed', 'processing')
  )
RETURNING b.id, b.owner
