-- purge_freeze_candidates: unfrozen batches whose window ended before `before`, so a
-- read freezes them (a finished batch nobody read is frozen only when read) and the
-- purge of finished batches finds them. Parameters: before, limit.
-- Uses batches_unfrozen (0001).
SELECT id FROM batches
WHERE frozen_completed IS NULL AND expires_at < %(before)s
ORDER BY expires_at
LIMIT %(limit)s
