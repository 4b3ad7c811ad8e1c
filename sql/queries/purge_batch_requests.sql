-- purge_batch_requests: delete at most `limit` requests of a frozen batch (all settled:
-- the state test only restates it). Parameters: batch_id, limit. Returns the ids.
-- Uses requests_batch_line (batch_id, line_number): every row of the batch is settled.
WITH chunk AS (
    SELECT id FROM requests
    WHERE batch_id = %(batch_id)s AND state IN ('completed', 'failed', 'canceled')
    LIMIT %(limit)s
)
DELETE FROM requests r
USING chunk
WHERE r.id = chunk.id
RETURNING r.id
