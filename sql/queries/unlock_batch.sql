-- unlock_batch: release lock_batch.sql's session-level lock once a creation is done (or
-- failed). Parameters: id.
SELECT pg_advisory_unlock(hashtextextended(%(id)s::text, 0))
