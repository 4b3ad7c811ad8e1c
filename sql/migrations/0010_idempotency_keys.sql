-- 0010_idempotency_keys: idempotent creates (issue 15, item 4).
--
-- Append-only: once shipped, this file is never edited (see 0001_initial.sql).
--
-- A client may send an `Idempotency-Key` header with POST /v1/files and POST /v1/batches.
-- One row per (owner, key): keys are per owner, so two tenants may use the same key.
-- The row is inserted in the transaction that creates the file or the batch (before the
-- object's own rows, so a concurrent request with the same key waits on it), which makes
-- "the key is remembered" and "the object exists" one fact: a retry after a crash
-- between the commit and the reply finds the object. `fingerprint` is
-- 'file:<sha256>' or 'batch:<sha256>' of what the request asked for
-- (fusillade/core/idempotency.py); `object_id` the file's or the batch's id. A key is
-- forgotten 24 hours after `created_at` (IDEMPOTENCY_TTL): ignored (and replaced) from
-- then on, and deleted by the daemons' maintenance in bounded chunks
-- (forget_idempotency_keys.sql, by the created_at index).

CREATE TABLE idempotency_keys (
    owner       text        NOT NULL,
    key         text        NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    fingerprint text        NOT NULL,
    object_id   uuid        NOT NULL,
    created_at  timestamptz NOT NULL,
    PRIMARY KEY (owner, key)
);

CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);
