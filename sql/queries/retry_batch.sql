-- retry_batch: failed (and, when asked, canceled) requests go back to pending with a
-- fresh attempt budget, and the batch's frozen counts and stamps are reset in the same
-- statement under a version bump (so no freeze computed before it can land).
-- Parameters: id, owner, version (as read), include_cancelled, now, window (interval).
-- A batch with nothing to retry is left as it is (no version bump, stamps kept).
-- Guard: the version as read, and no cancel or expiry being applied (a cancelling_at or
-- expired_at stamp on a batch whose counts are not frozen: core.batches.retry_refusal).
-- The guard is here, in the statement that writes, not only in the caller's earlier
-- read: a cancel or an expiry stamp does not bump the version, and one committed after
-- that read would otherwise be cleared by this statement after the user was told
-- "cancelling". Locking: the batch row (a concurrent cancel or stamp is waited for, and
-- the guard re-checked on the row it left). No row: refused, or nothing to retry; the
-- caller re-reads the batch to say which.
WITH b AS (
    UPDATE batches
    SET version = version + 1,
        frozen_completed = NULL, frozen_failed = NULL, frozen_canceled = NULL,
        frozen_input_tokens = NULL, frozen_output_tokens = NULL, last_finished_at = NULL,
        cancelling_at = NULL, expired_at = NULL,
        -- an expired batch gets a fresh window; a running one keeps its deadline
        expires_at = CASE WHEN expired_at IS NOT NULL OR expires_at <= %(now)s
                          THEN %(now)s + %(window)s ELSE expires_at END
    WHERE id = %(id)s AND owner = %(owner)s AND version = %(version)s
      AND (frozen_completed IS NOT NULL OR (cancelling_at IS NULL AND expired_at IS NULL))
      AND EXISTS (
          SELECT 1 FROM requests q
          WHERE q.batch_id = %(id)s
            AND (q.state = 'failed' OR (%(include_cancelled)s AND q.state = 'canceled'))
      )
    RETURNING id, expires_at
), moved AS (
    -- unsettled rows follow the batch to its new deadline, or they could never be claimed
    UPDATE requests q
    SET batch_expires_at = b.expires_at
    FROM b
    WHERE q.batch_id = b.id
      AND q.state IN ('pending', 'claimed', 'processing')
      AND q.batch_expires_at <> b.expires_at
    RETURNING q.id
), r AS (
    UPDATE requests q
    SET state = 'pending', daemon_id = NULL, claimed_at = NULL, started_at = NULL,
        finished_at = NULL, response_status = NULL, response_body = NULL,
        response_body_json = false, response_body_raw = NULL,
        failure_reason = NULL, failure_message = NULL, input_tokens = NULL,
        output_tokens = NULL, not_before = %(now)s, budget_base = q.attempts,
        batch_expires_at = b.expires_at
    FROM b
    WHERE q.batch_id = b.id
      AND (q.state = 'failed' OR (%(include_cancelled)s AND q.state = 'canceled'))
    RETURNING q.id
)
SELECT (SELECT count(*) FROM b) AS batches, (SELECT count(*) FROM r) AS requests
