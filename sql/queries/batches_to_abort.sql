-- batches_to_abort: of the batches a daemon has in flight, those it must abort now
-- (cancelled, or past their window). Parameters: batch_ids (uuid[]), now.
SELECT id,
       CASE WHEN cancelling_at IS NOT NULL THEN 'cancelled' ELSE 'expired' END AS reason
FROM batches
WHERE id = ANY(%(batch_ids)s::uuid[])
  AND (cancelling_at IS NOT NULL OR expired_at IS NOT NULL OR expires_at <= %(now)s)
