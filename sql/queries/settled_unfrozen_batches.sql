-- settled_unfrozen_batches: batches whose requests are all settled (and all created) but
-- whose counts are not frozen yet: nobody has read them since they ended. Maintenance
-- freezes them (which writes their webhook event), so an event never waits for a read.
-- Parameters: limit. Uses batches_unfrozen and requests_batch_state.
SELECT b.id
FROM batches b
WHERE b.frozen_completed IS NULL
  AND b.created_through IS NULL
  AND NOT EXISTS (
      SELECT 1 FROM requests r
      WHERE r.batch_id = b.id AND r.state IN ('pending', 'claimed', 'processing')
  )
ORDER BY b.expires_at
LIMIT %(limit)s
