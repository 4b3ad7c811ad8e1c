-- list_files: an owner's live files, newest first; keyset on id (uuid7 ids sort by
-- creation). Parameters: owner, after (uuid or null), purposes (text[] or null: any),
-- limit. Uses files_owner_list (owner, id DESC), scanned forward.
SELECT id, owner, filename, purpose, bytes, line_count, models, batch_id, created_at,
       expires_at
FROM files
WHERE owner = %(owner)s
  AND deleted_at IS NULL
  AND (%(after)s::uuid IS NULL OR id < %(after)s::uuid)
  AND (%(purposes)s::text[] IS NULL OR purpose = ANY(%(purposes)s::text[]))
ORDER BY id DESC
LIMIT %(limit)s
