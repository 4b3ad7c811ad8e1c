-- record_results: many attempt results in one statement, each fenced by its owner and
-- attempt: a row is written only while it is still processing under this daemon and this
-- attempt (so a daemon's late write after its row was reclaimed is refused), or, for a
-- success, when it was canceled after that attempt was sent (billed work wins: the frozen
-- counts of its batch are repaired in the same statement). Rows that fail the fence are lost races: counted by the caller, not raised.
-- Parameters: daemon_id; arrays of equal length: ids, attempts, states ('completed',
-- 'pending' for a retry, 'failed', 'canceled'), finished_at, not_before, statuses,
-- bodies, bodies_json (the body is compact strict JSON), bodies_raw (the exact bytes when
-- the body is only a rendering of them, else NULL), reasons, messages, input_tokens,
-- output_tokens.
-- Returns the ids written.
WITH input AS (
    SELECT *
    FROM unnest(
        %(ids)s::uuid[], %(attempts)s::int[], %(states)s::text[], %(finished_at)s::timestamptz[],
        %(not_before)s::timestamptz[], %(statuses)s::smallint[], %(bodies)s::text[],
        %(bodies_json)s::bool[], %(bodies_raw)s::bytea[], %(reasons)s::text[],
        %(messages)s::text[], %(input_tokens)s::int[], %(output_tokens)s::int[]
    ) AS i (id, attempt, state, finished_at, not_before, status, body, body_json, body_raw,
            reason, message, input_tokens, output_tokens)
), locked AS (
    SELECT r.id, r.batch_id, r.state AS old_state
    FROM requests r
    JOIN input i ON i.id = r.id
    WHERE r.daemon_id = %(daemon_id)s
      AND r.attempts = i.attempt
      AND (r.state = 'processing'
           OR (i.state = 'completed' AND r.state = 'canceled' AND r.started_at IS NOT NULL))
    FOR UPDATE OF r
), written AS (
    UPDATE requests r
    SET state = i.state,
        daemon_id = CASE WHEN i.state = 'pending' THEN NULL ELSE r.daemon_id END,
        claimed_at = CASE WHEN i.state = 'pending' THEN NULL ELSE r.claimed_at END,
        started_at = CASE WHEN i.state = 'pending' THEN NULL ELSE r.started_at END,
        finished_at = CASE WHEN i.state = 'pending' THEN NULL ELSE i.finished_at END,
        -- a retry is never due before its attempt ended
        not_before = CASE WHEN i.state = 'pending'
                          THEN greatest(coalesce(i.not_before, i.finished_at), i.finished_at)
                          ELSE r.not_before END,
        response_status = i.status,
        response_body = i.body,
        response_body_json = i.body_json,
        response_body_raw = i.body_raw,
        failure_reason = i.reason,
        failure_message = i.message,
        input_tokens = i.input_tokens,
        output_tokens = i.output_tokens
    FROM input i, locked l
    WHERE r.id = i.id AND l.id = i.id
    RETURNING r.id, r.batch_id, l.old_state, r.state AS new_state, r.input_tokens,
              r.output_tokens
), repaired AS (
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
