-- claim_idempotency_key: remember (owner, key) for the object this transaction creates.
-- Parameters: owner, key, fingerprint, object_id, created_at, expired_before.
-- Returns one row when the key is this transaction's (new, or remembered longer than the
-- TTL: replaced); no row when a live key holds it (read it with get_idempotency_key).
-- Locking: the key's unique index. A concurrent transaction inserting the same key makes
-- this statement wait until that one commits (then: no row) or rolls back (then: the
-- insert goes ahead), so one request with a key creates the object; the others wait.
INSERT INTO idempotency_keys (owner, key, fingerprint, object_id, created_at)
VALUES (%(owner)s, %(key)s, %(fingerprint)s, %(object_id)s, %(created_at)s)
ON CONFLICT (owner, key) DO UPDATE
    SET fingerprint = EXCLUDED.fingerprint,
        object_id = EXCLUDED.object_id,
        created_at = EXCLUDED.created_at
    WHERE idempotency_keys.created_at < %(expired_before)s
RETURNING object_id
