-- sweep_cancelled: pending requests of cancelled batches become canceled, a bounded
-- chunk at a time. Parameters: now, limit, batch_id (null: every cancelled batch).
-- Locking: FOR UPDATE SKIP LOCKED on the requests picked.
WITH victims AS (
    SELECT r.id
    FROM batches b
    JOIN requests r ON r.batch_id = b.id AND r.state = 'pending'
    WHERE b.cancelling_at IS NOT NULL
      AND b.frozen_completed IS NULL
      AND (%(batch_id)s::uuid IS NULL OR b.id = %(batch_id)s::uuid)
    LIMIT %(limit)s
    FOR UPDATE OF r SKIP LOCKED
)
UPDATE requests r
SET state = 'canceled', finished_at = %(now)s, failure_reason = 'cancelled',
    failure_message = 'batch cancelled'
FROM victims
WHERE r.id = victims.id
RETURNING r.id
