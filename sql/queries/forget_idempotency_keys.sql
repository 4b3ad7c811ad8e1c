-- forget_idempotency_keys: delete at most `limit` keys remembered longer than the TTL.
-- Parameters: expired_before, limit. Returns the deleted keys (the caller repeats
-- until fewer than `limit`). Locking: the chosen rows, SKIP LOCKED (a claim replacing an
-- expired key holds it; another daemon's maintenance may run at the same time).
WITH doomed AS (
    SELECT owner, key
    FROM idempotency_keys
    WHERE created_at < %(expired_before)s
    ORDER BY created_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
DELETE FROM idempotency_keys AS k
USING doomed
WHERE k.owner = doomed.owner AND k.key = doomed.key
  AND k.created_at < %(expired_before)s
RETURNING k.key
