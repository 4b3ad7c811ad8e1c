-- list_files_asc: list_files oldest first (order=asc): keyset on id, after the cursor
-- means newer than it. Parameters: owner, after (uuid or null), purposes (text[] or
-- null: any), limit. Uses files_owner_list (owner, id DESC), scanned backward.
SELECT id, owner, filename, purpose, bytes, line_count, models, batch_id, created_at,
       expires_at
FROM files
WHERE owner = %(owner)s
  AND deleted_at IS NULL
  AND (%(after)s::uuid IS NULL OR id > %(after)s::uuid)
  AND (%(purposes)s::text[] IS NULL OR purpose = ANY(%(purposes)s::text[]))
ORDER BY id ASC
LIMIT %(limit)s
