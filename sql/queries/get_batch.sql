-- get_batch: one batch row of one owner (owner null: any owner, for the daemon).
-- Parameters: id, owner. Locking: none.
SELECT id, owner, input_file_id, output_file_id, error_file_id, endpoint, completion_window,
       metadata, created_at, expires_at, total, models, version, cancelling_at, expired_at,
       frozen_completed, frozen_failed, frozen_canceled, frozen_input_tokens,
       frozen_output_tokens, last_finished_at, escalated_at
FROM batches
WHERE id = %(id)s AND (%(owner)s::text IS NULL OR owner = %(owner)s::text)
