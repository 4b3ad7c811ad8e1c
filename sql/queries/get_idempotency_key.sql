-- get_idempotency_key: the live key (owner, key), after claim_idempotency_key found it
-- taken. Parameters: owner, key, expired_before. A statement of its own: under READ
-- COMMITTED it sees the row a concurrent transaction committed while the claim waited,
-- which the claim statement's snapshot does not. Locking: none.
SELECT fingerprint, object_id
FROM idempotency_keys
WHERE owner = %(owner)s AND key = %(key)s AND created_at >= %(expired_before)s
