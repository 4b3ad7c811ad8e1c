-- live_output: the output lines of a batch that a follower has not read, in
-- (result_xid, id) order (docs/semantics.md, "Following results while a batch runs").
-- result_xid is the id of the transaction that recorded the line (record_results.sql).
-- A follower's cursor is a position (after_xid, after_id) plus the transactions that
-- were in progress below that position when it was reached ("waiting"; each with the
-- last of its lines read, for a cursor taken mid-read): a line of one of those becomes
-- visible only when it commits, after the follower passed its place. So a read returns
-- first the lines of the waiting transactions not yet read, then a page after the
-- position; the caller works out the next cursor with live_in_progress.sql, run in the
-- same snapshot (read_one_snapshot.sql). Rows completed before migration 0012 have no
-- result_xid and count as '1' (below every transaction id). Parameters: batch_id,
-- after_xid (text; '0' at the start), after_id, waiting_xids (text[]), waiting_after
-- (uuid[], the last line read of each; the zero uuid for none), limit (of the page; the
-- waiting transactions' lines come all). Uses requests_live_output, then
-- request_templates_pkey once per row. Columns as stream_output.sql, then result_xid
-- (text) and late (true: a waiting transaction's line).
WITH late AS MATERIALIZED (
    SELECT r.id, r.file_id, r.line_number, r.state, r.response_status, r.response_body,
           r.response_body_json, r.response_body_raw, r.failure_reason, r.failure_message,
           r.finished_at, coalesce(r.result_xid, '1'::xid8) AS result_xid
    FROM unnest(%(waiting_xids)s::xid8[], %(waiting_after)s::uuid[]) AS w (xid, after_id)
    JOIN requests r
      ON r.batch_id = %(batch_id)s
     AND r.state = 'completed'
     AND coalesce(r.result_xid, '1'::xid8) = w.xid
     AND r.id > w.after_id
), page AS MATERIALIZED (
    SELECT r.id, r.file_id, r.line_number, r.state, r.response_status, r.response_body,
           r.response_body_json, r.response_body_raw, r.failure_reason, r.failure_message,
           r.finished_at, coalesce(r.result_xid, '1'::xid8) AS result_xid
    FROM requests r
    WHERE r.batch_id = %(batch_id)s
      AND r.state = 'completed'
      AND (coalesce(r.result_xid, '1'::xid8), r.id) > (%(after_xid)s::xid8, %(after_id)s::uuid)
    ORDER BY coalesce(r.result_xid, '1'::xid8), r.id
    LIMIT %(limit)s
), lines AS (
    SELECT *, true AS late FROM late
    UNION ALL
    SELECT *, false AS late FROM page
)
SELECT p.id,
       (SELECT t.custom_id FROM request_templates t
        WHERE t.file_id = p.file_id AND t.line_number = p.line_number) AS custom_id,
       p.state, p.response_status, p.response_body, p.response_body_json, p.response_body_raw,
       p.failure_reason, p.failure_message, p.finished_at, p.result_xid::text, p.late
FROM lines p
ORDER BY p.late DESC, p.result_xid, p.id
