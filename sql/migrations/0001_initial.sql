-- 0001_initial: files, request templates, batches, requests, daemons.
--
-- Append-only: once shipped, this file is never edited (the migrator records its
-- checksum and refuses to start when it changes). Later changes go in new files.
--
-- Ids are uuids made by the application (uuid7 for files and batches, so id order is
-- creation order and list cursors are plain id comparisons) or by gen_random_uuid()
-- for requests. Timestamps are timestamptz written from the application's clock.

CREATE TABLE files (
    id          uuid        PRIMARY KEY,
    owner       text        NOT NULL,
    filename    text        NOT NULL,
    purpose     text        NOT NULL CHECK (purpose IN ('batch', 'batch_output', 'batch_error')),
    bytes       bigint      NOT NULL DEFAULT 0 CHECK (bytes >= 0),
    line_count  integer     NOT NULL DEFAULT 0 CHECK (line_count >= 0),
    -- distinct models of the templates, so a batch knows its models without a scan
    models      text[]      NOT NULL DEFAULT '{}',
    -- output and error files are views of one batch's requests ("virtual files")
    batch_id    uuid        NULL,
    created_at  timestamptz NOT NULL,
    expires_at  timestamptz NULL,
    deleted_at  timestamptz NULL,
    CONSTRAINT files_batch_link CHECK ((purpose = 'batch') = (batch_id IS NULL))
);

-- list_files: the owner's live files, newest first, keyset on id.
CREATE INDEX files_owner_list ON files (owner, id DESC) WHERE deleted_at IS NULL;

CREATE TABLE request_templates (
    file_id     uuid    NOT NULL REFERENCES files (id),
    line_number integer NOT NULL CHECK (line_number >= 1),
    custom_id   text    NOT NULL,
    endpoint    text    NOT NULL DEFAULT '',
    method      text    NOT NULL,
    path        text    NOT NULL,
    model       text    NOT NULL,
    body        text    NOT NULL,
    api_key     text    NULL,
    PRIMARY KEY (file_id, line_number)
);

CREATE TABLE batches (
    id                uuid        PRIMARY KEY,
    owner             text        NOT NULL,
    input_file_id     uuid        NOT NULL REFERENCES files (id),
    output_file_id    uuid        NOT NULL UNIQUE REFERENCES files (id),
    error_file_id     uuid        NOT NULL UNIQUE REFERENCES files (id),
    endpoint          text        NOT NULL,
    completion_window text        NOT NULL,
    metadata          jsonb       NULL,
    created_at        timestamptz NOT NULL,
    expires_at        timestamptz NOT NULL,
    total             integer     NOT NULL CHECK (total >= 0),
    models            text[]      NOT NULL DEFAULT '{}',
    -- bumped by every retry; stamp and freeze writes are guarded by it
    version           integer     NOT NULL DEFAULT 0,
    -- The only stamps stored: the rest (finalizing, completed, cancelled) are derived
    -- by fusillade.core.batches from these, the frozen counts and last_finished_at.
    cancelling_at     timestamptz NULL,
    expired_at        timestamptz NULL,
    -- counts frozen once the batch is terminal, so old batches are never recounted
    frozen_completed  integer     NULL,
    frozen_failed     integer     NULL,
    frozen_canceled   integer     NULL,
    frozen_input_tokens  bigint   NULL,
    frozen_output_tokens bigint   NULL,
    last_finished_at  timestamptz NULL,
    CONSTRAINT batches_frozen_all_or_none CHECK (
        (frozen_completed IS NULL) = (frozen_failed IS NULL)
        AND (frozen_completed IS NULL) = (frozen_canceled IS NULL)
        AND (frozen_completed IS NULL) = (frozen_input_tokens IS NULL)
        AND (frozen_completed IS NULL) = (frozen_output_tokens IS NULL)
    ),
    CONSTRAINT batches_frozen_sum CHECK (
        frozen_completed IS NULL
        OR frozen_completed + frozen_failed + frozen_canceled = total
    )
);

-- list_batches: newest first per owner, keyset on id.
CREATE INDEX batches_owner_list ON batches (owner, id DESC);
-- Maintenance sweeps (expiry, cancellation, finalisation) visit only unfrozen batches.
CREATE INDEX batches_unfrozen ON batches (expires_at) WHERE frozen_completed IS NULL;

CREATE TABLE requests (
    id               uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    batch_id         uuid        NOT NULL REFERENCES batches (id),
    -- the template is (file_id, line_number); no FK: templates are never hard-deleted
    -- in the request path and the check would slow batch creation on millions of rows
    file_id          uuid        NOT NULL,
    line_number      integer     NOT NULL,
    -- copies of immutable values, so the claim index can order and filter by them
    model            text        NOT NULL,
    batch_expires_at timestamptz NOT NULL,
    state            text        NOT NULL DEFAULT 'pending' CHECK (
        state IN ('pending', 'claimed', 'processing', 'completed', 'failed', 'canceled')
    ),
    attempts         integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    budget_base      integer     NOT NULL DEFAULT 0 CHECK (budget_base >= 0),
    not_before       timestamptz NOT NULL,
    daemon_id        uuid        NULL,
    claimed_at       timestamptz NULL,
    started_at       timestamptz NULL,
    finished_at      timestamptz NULL,
    response_status  smallint    NULL,
    response_body    text        NULL,
    failure_reason   text        NULL CHECK (failure_reason IN (
        'http_status', 'timeout', 'connect', 'builder', 'cancelled', 'expired', 'lost'
    )),
    failure_message  text        NULL,
    input_tokens     integer     NULL,
    output_tokens    integer     NULL,
    CONSTRAINT requests_pending_fields CHECK (state <> 'pending' OR (
        daemon_id IS NULL AND claimed_at IS NULL AND started_at IS NULL AND finished_at IS NULL)),
    CONSTRAINT requests_claimed_fields CHECK (state <> 'claimed' OR (
        daemon_id IS NOT NULL AND claimed_at IS NOT NULL AND started_at IS NULL
        AND finished_at IS NULL)),
    CONSTRAINT requests_processing_fields CHECK (state <> 'processing' OR (
        daemon_id IS NOT NULL AND claimed_at IS NOT NULL AND started_at IS NOT NULL
        AND finished_at IS NULL)),
    CONSTRAINT requests_completed_fields CHECK (state <> 'completed' OR (
        finished_at IS NOT NULL AND response_status IS NOT NULL AND response_body IS NOT NULL)),
    CONSTRAINT requests_failed_fields CHECK (state <> 'failed' OR (
        finished_at IS NOT NULL AND failure_reason IS NOT NULL)),
    CONSTRAINT requests_canceled_fields CHECK (state <> 'canceled' OR (
        finished_at IS NOT NULL AND failure_reason IS NOT NULL
        AND failure_reason IN ('cancelled', 'expired'))),
    CONSTRAINT requests_budget CHECK (budget_base <= attempts)
);

-- One request per template per batch: also what makes create_batch idempotent.
CREATE UNIQUE INDEX requests_batch_line ON requests (batch_id, line_number);
-- claim: per model, earliest deadline first, then batch age (uuid7 ids), then line.
-- Exactly the claim's predicate: only pending rows are in it, so the rows of finished
-- batches never slow it and a swept cancelled batch leaves it entirely.
CREATE INDEX requests_claim ON requests (model, batch_expires_at, batch_id, line_number)
    WHERE state = 'pending';
-- batch counts (status of a running batch), and the cancel/expiry sweeps.
CREATE INDEX requests_batch_state ON requests (batch_id, state);
-- reclaim and release: a daemon's in-flight rows; time-based fallback by claim age.
CREATE INDEX requests_in_flight_owner ON requests (daemon_id)
    WHERE state IN ('claimed', 'processing');
CREATE INDEX requests_in_flight_age ON requests (claimed_at)
    WHERE state IN ('claimed', 'processing');
-- output and error files: keyset on (finished_at, id) in completion order.
CREATE INDEX requests_output ON requests (batch_id, finished_at, id)
    WHERE state = 'completed';
CREATE INDEX requests_errors ON requests (batch_id, finished_at, id)
    WHERE state IN ('failed', 'canceled');

CREATE TABLE daemons (
    id           uuid        PRIMARY KEY,
    hostname     text        NOT NULL,
    pid          integer     NOT NULL,
    version      text        NOT NULL,
    status       text        NOT NULL CHECK (status IN ('running', 'stopped', 'dead')),
    started_at   timestamptz NOT NULL,
    heartbeat_at timestamptz NOT NULL,
    stopped_at   timestamptz NULL,
    config       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    CONSTRAINT daemons_stopped_fields CHECK ((status = 'running') = (stopped_at IS NULL))
);

CREATE INDEX daemons_running_heartbeat ON daemons (heartbeat_at) WHERE status = 'running';
