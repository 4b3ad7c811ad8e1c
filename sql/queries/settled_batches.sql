-- settled_batches: batches not frozen yet whose requests all exist and are all settled
-- (completed, failed or canceled): the batches the next read freezes (freeze_batch.sql).
-- Maintenance reads each of them, so it freezes, and its "finished" line is logged
-- (fusillade/lifecycle.py), soon after its last request settled even when nobody asks.
-- Parameters: limit. Uses batches_unfrozen (only batches not frozen are visited) and
-- batch_state_counts_pkey (the sum of each state's shards, as count_batch_requests.sql).
-- Locking: none (a snapshot; the freeze checks again under the batch row's lock).
SELECT b.id
FROM batches b
WHERE b.frozen_completed IS NULL
  AND b.created_through IS NULL
  AND (
      SELECT coalesce(sum(s.n), 0)
      FROM batch_state_counts s
      WHERE s.batch_id = b.id AND s.state IN ('pending', 'claimed', 'processing')
  ) = 0
ORDER BY b.expires_at, b.id
LIMIT %(limit)s
