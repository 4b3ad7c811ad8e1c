-- record_results: many attempt results in one statement, each a compare-and-set of what
-- the core computed (fusillade/core/attempts.py): the row takes the given state and
-- fields only while it is still in one of the result's source states, under this daemon,
-- at this attempt and with this start (the attempt as the daemon held it). So a daemon's
-- late write after its row was reclaimed or released (owner cleared, or another attempt)
-- is refused. The success of an attempt that was sent lists canceled among its sources
-- (the state table's (canceled, succeed) row: billed work wins): it replaces the canceled
-- result its owner recorded, and the frozen counts of its batch are repaired in the same
-- statement. Rows that fail the fence are lost races: counted by the caller, not raised.
-- No rule of the state table is restated here: every value written comes from the core.
-- Parameters: daemon_id; arrays of equal length, one element per result: ids, attempts
-- and held_started (the fence), sources (the old states allowed, comma-separated),
-- states, owners, claimed_at, started_at, finished_at, not_before (the values to write),
-- statuses, bodies, bodies_json (the body is compact strict JSON), bodies_raw (the exact
-- bytes when the body is only a rendering of them, else NULL), reasons, messages,
-- input_tokens, output_tokens. The uuid and timestamp arrays are sent in binary format:
-- psycopg formats 500 timestamps as text in about 3 ms, in binary in well under 1 ms.
-- Locking: FOR UPDATE of the fenced rows, then of the batches with a late success.
-- A completed result also takes this transaction's id as result_xid: the order in which
-- followers read a running batch's output (live_output.sql).
-- Returns the ids written.
WITH input AS (
    SELECT *
    FROM unnest(
        %(ids)b::uuid[], %(attempts)s::int[], %(held_started)b::timestamptz[],
        %(sources)s::text[], %(states)s::text[], %(owners)b::uuid[],
        %(claimed_at)b::timestamptz[], %(started_at)b::timestamptz[],
        %(finished_at)b::timestamptz[], %(not_before)b::timestamptz[], %(statuses)s::smallint[],
        %(bodies)s::text[], %(bodies_json)s::bool[], %(bodies_raw)s::bytea[],
        %(reasons)s::text[], %(messages)s::text[], %(input_tokens)s::int[],
        %(output_tokens)s::int[]
    ) AS i (id, attempt, held_started, sources, state, owner, claimed_at, started_at,
            finished_at, not_before, status, body, body_json, body_raw, reason, message,
            input_tokens, output_tokens)
), locked AS (
    SELECT r.id, r.batch_id, r.state AS old_state
    FROM requests r
    JOIN input i ON i.id = r.id
    WHERE r.daemon_id = %(daemon_id)s
      AND r.attempts = i.attempt
      AND r.started_at = i.held_started
      AND r.state = ANY (string_to_array(i.sources, ','))
    FOR UPDATE OF r
), written AS (
    UPDATE requests r
    SET state = i.state,
        daemon_id = i.owner,
        claimed_at = i.claimed_at,
        started_at = i.started_at,
        finished_at = i.finished_at,
        not_before = i.not_before,
        response_status = i.status,
        response_body = i.body,
        response_body_json = i.body_json,
        response_body_raw = i.body_raw,
        failure_reason = i.reason,
        failure_message = i.message,
        input_tokens = i.input_tokens,
        output_tokens = i.output_tokens,
        -- the position of a completed line for followers (0012_result_sequence.sql)
        result_xid = CASE WHEN i.state = 'completed' THEN pg_current_xact_id() END
    FROM input i, locked l
    WHERE r.id = i.id AND l.id = i.id
    RETURNING r.id, r.batch_id, l.old_state, r.input_tokens, r.output_tokens
), repaired AS (
    -- A result that replaces canceled (the late success) moves one request of a batch
    -- whose counts may be frozen from canceled to completed.
    UPDATE batches b
    SET frozen_completed = b.frozen_completed + x.n,
        frozen_canceled = b.frozen_canceled - x.n,
        frozen_input_tokens = b.frozen_input_tokens + x.input_tokens,
        frozen_output_tokens = b.frozen_output_tokens + x.output_tokens
    FROM (
        SELECT batch_id, count(*) AS n,
               coalesce(sum(input_tokens), 0) AS input_tokens,
               coalesce(sum(output_tokens), 0) AS output_tokens
        FROM written
        WHERE old_state = 'canceled'
        GROUP BY batch_id
    ) x
    -- Not "AND b.frozen_completed IS NOT NULL": that would be read from this statement's
    -- snapshot, and a freeze that committed after it would be missed. Every batch with a
    -- late success is updated (a live batch's NULL counts stay NULL), so the update waits
    -- on a freeze holding the row (lock_batch_for_freeze.sql) and then applies to the row
    -- as that freeze left it.
    WHERE b.id = x.batch_id
    RETURNING b.id
)
SELECT id FROM written
