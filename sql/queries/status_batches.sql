-- status_batches: the batches the status page shows, newest first: the newest unfinished
-- (not frozen) batches of the scope and the newest finished ones, up to limit of each.
-- Parameters: owner (null: every owner), limit. Unfinished batches come through
-- batches_unfrozen (as many as run at once), finished ones through batches_owner_list or,
-- for every owner, a backward scan of the primary key: no read grows with the table.
(
SELECT id, owner, input_file_id, output_file_id, error_file_id, endpoint, completion_window,
       metadata, created_at, expires_at, total, models, version, cancelling_at, expired_at,
       frozen_completed, frozen_failed, frozen_canceled, frozen_input_tokens,
       frozen_output_tokens, last_finished_at, escalated_at
FROM batches
WHERE frozen_completed IS NULL AND (%(owner)s::text IS NULL OR owner = %(owner)s::text)
ORDER BY id DESC
LIMIT %(limit)s
)
UNION ALL
(
SELECT id, owner, input_file_id, output_file_id, error_file_id, endpoint, completion_window,
       metadata, created_at, expires_at, total, models, version, cancelling_at, expired_at,
       frozen_completed, frozen_failed, frozen_canceled, frozen_input_tokens,
       frozen_output_tokens, last_finished_at, escalated_at
FROM batches
WHERE frozen_completed IS NOT NULL AND (%(owner)s::text IS NULL OR owner = %(owner)s::text)
ORDER BY id DESC
LIMIT %(limit)s
)
ORDER BY id DESC
