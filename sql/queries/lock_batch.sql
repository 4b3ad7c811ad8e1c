-- lock_batch: serialise the creation of one batch id (idempotent create_batch), for the
-- whole creation: a session-level advisory lock, held across the transactions of every
-- chunk of requests and released by unlock_batch.sql (or when the connection ends: a
-- creator that died holds nothing, and maintenance resumes its batch,
-- pick_unfinished_creation.sql). Parameters: id.
SELECT pg_advisory_lock(hashtextextended(%(id)s::text, 0))
