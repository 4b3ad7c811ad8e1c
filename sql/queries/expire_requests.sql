-- expire_requests: pending requests of expired batches end canceled (reason expired),
-- a bounded chunk at a time. In-flight rows are aborted and written by their owner
-- (batches_to_abort), or reclaimed to pending and swept here if the owner is gone.
-- Parameters: now, limit.
WITH victims AS (
    SELECT r.id
    FROM batches b
    JOIN requests r ON r.batch_id = b.id AND r.state = 'pending'
    WHERE b.expired_at IS NOT NULL
      AND b.frozen_completed IS NULL
    LIMIT %(limit)s
    FOR UPDATE OF r SKIP LOCKED
)
UPDATE requests r
SET state = 'canceled', finished_at = %(now)s, failure_reason = 'expired',
    failure_message = 'batch expired'
FROM victims
WHERE r.id = victims.id
RETURNING r.id
