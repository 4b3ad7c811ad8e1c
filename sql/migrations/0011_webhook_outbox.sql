-- 0011_webhook_outbox: the outbox of webhook events (issue 15, item 1; docs/webhooks.md).
--
-- Append-only: once shipped, this file is never edited (see 0001_initial.sql).
--
-- One row per batch per terminal transition, written in the transaction that freezes the
-- batch (so a terminal batch always has its event, and a rolled-back freeze none): unique
-- on (batch_id, batch_version), since a retry bumps the version and may end the batch
-- again. Rows are written for every owner; only daemons with a webhook configured for
-- the owner send them, and maintenance gives up the rest after the 72-hour horizon.
--
-- A delivery claims a due row by bumping attempts, taking claimed_by and pushing
-- next_attempt_at past the send's timeout (a lease: a daemon killed mid-send leaves the
-- row due again once the lease ends, for any daemon to send); it then settles it fenced
-- on (claimed_by, attempts). The body is rendered from id, type, created_at and batch_id
-- (fusillade.core.webhooks.payload), so every attempt sends the same bytes.

CREATE TABLE webhook_events (
    id              uuid        PRIMARY KEY,
    owner           text        NOT NULL,
    type            text        NOT NULL CHECK (
        type IN ('batch.completed', 'batch.failed', 'batch.expired', 'batch.cancelled')
    ),
    batch_id        uuid        NOT NULL REFERENCES batches (id),
    batch_version   integer     NOT NULL,
    created_at      timestamptz NOT NULL,
    attempts        integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at timestamptz NOT NULL,
    claimed_by      uuid        NULL,
    delivered_at    timestamptz NULL,
    given_up_at     timestamptz NULL,
    last_error      text        NULL,
    CONSTRAINT webhook_events_once UNIQUE (batch_id, batch_version),
    CONSTRAINT webhook_events_settled_once CHECK (delivered_at IS NULL OR given_up_at IS NULL)
);

-- the delivery loop's claim and the pending gauge: only rows still to send
CREATE INDEX webhook_events_due ON webhook_events (next_attempt_at)
    WHERE delivered_at IS NULL AND given_up_at IS NULL;
