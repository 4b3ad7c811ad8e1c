-- lock_batch: serialise concurrent creations of one batch id (idempotent create_batch).
-- Parameters: id. Transaction-scoped advisory lock, released at commit (safe through
-- PgBouncer in transaction pooling, unlike a session-level lock).
SELECT pg_advisory_xact_lock(hashtextextended(%(id)s::text, 0))
