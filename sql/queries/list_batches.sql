-- list_batches: an owner's batches, newest first; keyset on id (uuid7 sorts by creation).
-- Parameters: owner, after (uuid or null), limit. Uses batches_owner_list; no
-- COUNT(*) OVER() (it would read every row of the owner, whatever the limit): the caller
-- asks for limit + 1 rows to learn has_more.
SELECT id, owner, input_file_id, output_file_id, error_file_id, endpoint, completion_window,
       metadata, created_at, expires_at, total, models, version, cancelling_at, expired_at,
       frozen_completed, frozen_failed, frozen_canceled, frozen_input_tokens,
       frozen_output_tokens, last_finished_at, escalated_at
FROM batches
WHERE owner = %(owner)s AND (%(after)s::uuid IS NULL OR id < %(after)s::uuid)
ORDER BY id DESC
LIMIT %(limit)s
