-- live_output: a page of a batch's output lines after a follower's cursor, in
-- (result_xid, id) order, and only lines that can no longer be preceded by another:
-- while the batch runs (settled false), those recorded by a transaction below this
-- snapshot's xmin. Every transaction with a smaller id has ended, and one still running
-- or not yet begun has an id at or above xmin, so a line that becomes visible later
-- always sorts after every line returned here (docs/semantics.md). Once the batch is
-- settled (every result committed before the caller read its status) the horizon is
-- lifted. Parameters: batch_id, after_xid (text; '0' for the start), after_id, settled,
-- limit. Uses requests_live_output, then request_templates_pkey once per row.
-- A row completed before migration 0012 has no result_xid and counts as '1'.
-- Columns as stream_output.sql, then the cursor: result_xid (as text).
WITH page AS MATERIALIZED (
    SELECT r.id, r.file_id, r.line_number, r.state, r.response_status, r.response_body,
           r.response_body_json, r.response_body_raw, r.failure_reason, r.failure_message,
           r.finished_at, coalesce(r.result_xid, '1'::xid8) AS result_xid
    FROM requests r
    WHERE r.batch_id = %(batch_id)s
      AND r.state = 'completed'
      AND (coalesce(r.result_xid, '1'::xid8), r.id) > (%(after_xid)s::xid8, %(after_id)s::uuid)
      -- the horizon: one value per statement (an InitPlan), not a call per row
      AND (%(settled)s OR coalesce(r.result_xid, '1'::xid8)
                          < (SELECT pg_snapshot_xmin(pg_current_snapshot())))
    ORDER BY coalesce(r.result_xid, '1'::xid8), r.id
    LIMIT %(limit)s
)
SELECT p.id,
       (SELECT t.custom_id FROM request_templates t
        WHERE t.file_id = p.file_id AND t.line_number = p.line_number) AS custom_id,
       p.state, p.response_status, p.response_body, p.response_body_json, p.response_body_raw,
       p.failure_reason, p.failure_message, p.finished_at, p.result_xid::text
FROM page p
ORDER BY p.result_xid, p.id
