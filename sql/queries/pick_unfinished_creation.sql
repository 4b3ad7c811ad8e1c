-- pick_unfinished_creation: one batch whose requests are not all created and whose
-- creator is gone (it held lock_batch.sql's session lock for the whole creation: a lock
-- that can be taken means the creator died). The lock taken here is transaction-scoped:
-- the caller writes one chunk (create_batch_requests.sql) in the same transaction, and a
-- creator that comes back waits for it. Parameters: none. Uses batches_creating.
SELECT id
FROM batches
WHERE created_through IS NOT NULL
  AND pg_try_advisory_xact_lock(hashtextextended(id::text, 0))
LIMIT 1
