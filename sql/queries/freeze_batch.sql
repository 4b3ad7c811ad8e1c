-- freeze_batch: store the final counts, token usage and last result time of a batch
-- whose requests are all settled, so it is never recounted: a terminal batch is read
-- from its row.
-- Parameters: id, version. Guarded by version (a retry bumps it, so a freeze computed
-- before the retry cannot land) and by "nothing unsettled" (checked in the same
-- statement). Returns the row when it froze, nothing otherwise.
WITH agg AS (
    SELECT count(*) FILTER (WHERE state = 'completed') AS completed,
           count(*) FILTER (WHERE state = 'failed') AS failed,
           count(*) FILTER (WHERE state = 'canceled') AS canceled,
           count(*) FILTER (WHERE state IN ('pending', 'claimed', 'processing')) AS unsettled,
           max(finished_at) AS last_finished_at,
           coalesce(sum(input_tokens) FILTER (WHERE state = 'completed'), 0) AS input_tokens,
           coalesce(sum(output_tokens) FILTER (WHERE state = 'completed'), 0) AS output_tokens
    FROM requests
    WHERE batch_id = %(id)s
)
UPDATE batches b
SET frozen_completed = agg.completed,
    frozen_failed = agg.failed,
    frozen_canceled = agg.canceled,
    frozen_input_tokens = agg.input_tokens,
    frozen_output_tokens = agg.output_tokens,
    last_finished_at = agg.last_finished_at
FROM agg
WHERE b.id = %(id)s
  AND b.version = %(version)s
  AND b.frozen_completed IS NULL
  AND agg.unsettled = 0
  AND agg.completed + agg.failed + agg.canceled = b.total
RETURNING b.id
