-- claimable_batches: the batches a claim may take rows from, with what the claim loop's
-- allocator and the deadline check need to know of each (issue 13, items 4 and 5).
-- Parameters: now. Locking: none (a snapshot; claim.sql re-checks each batch it is given).
-- Claimable: not frozen, cancelled or expired, deadline not passed: the predicate of the
-- partial index batches_claimable (0005_claim_indexes.sql), read in its order (earliest
-- deadline, then batch age), so only live batches are visited. Counts come from
-- batch_state_counts (sum of each state's shards, as count_batch_requests.sql; a few
-- dozen rows per batch at most, whatever its size): pending counts rows backing off
-- too, so it bounds what is due from above; a batch still being created adds its lines
-- past created_through, whose requests do not exist yet. finished is completed + failed
-- + canceled. Batches with nothing pending are left out: every unsettled request of
-- theirs is in flight, so a claim could take nothing from them.
SELECT b.id, b.owner, b.models, b.expires_at, b.created_at, b.completion_window,
       b.escalated_at IS NOT NULL AS escalated, b.total,
       c.pending + coalesce(b.total - b.created_through, 0) AS pending, c.finished
FROM batches b
CROSS JOIN LATERAL (
    SELECT coalesce(sum(s.n) FILTER (WHERE s.state = 'pending'), 0)::bigint AS pending,
           coalesce(sum(s.n) FILTER (WHERE s.state IN ('completed', 'failed', 'canceled')),
                    0)::bigint AS finished
    FROM batch_state_counts s
    WHERE s.batch_id = b.id
) c
WHERE b.frozen_completed IS NULL
  AND b.cancelling_at IS NULL
  AND b.expired_at IS NULL
  AND b.expires_at > %(now)s
  AND c.pending + coalesce(b.total - b.created_through, 0) > 0
ORDER BY b.expires_at, b.id
