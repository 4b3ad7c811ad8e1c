-- purge_file_progress: record how far the purge of a file's templates got; `done` sets
-- purged_at (its content is gone). Parameters: file_id, through, done, now.
UPDATE files
SET purged_through = CASE WHEN %(done)s THEN 0 ELSE %(through)s END,
    purged_at = CASE WHEN %(done)s THEN %(now)s::timestamptz ELSE NULL END
WHERE id = %(file_id)s
