-- stream_output: a page of a batch's completed requests in completion order; keyset on
-- (finished_at, id), never OFFSET. Parameters: batch_id, after_time, after_id, limit.
-- Uses requests_output, then request_templates_pkey once per row of the page.
-- The page is taken from requests alone, first (MATERIALIZED), and the custom_id looked
-- up per row: joining before the LIMIT let the planner misjudge how many rows follow the
-- cursor and pick a parallel plan with JIT, about 9x slower per page (performance.md, P5).
WITH page AS MATERIALIZED (
    SELECT r.id, r.file_id, r.line_number, r.state, r.response_status, r.response_body,
           r.response_body_json, r.response_body_raw, r.failure_reason, r.failure_message,
           r.finished_at
    FROM requests r
    WHERE r.batch_id = %(batch_id)s
      AND r.state = 'completed'
      AND (r.finished_at, r.id) > (%(after_time)s::timestamptz, %(after_id)s::uuid)
    ORDER BY r.finished_at, r.id
    LIMIT %(limit)s
)
SELECT p.id,
       (SELECT t.custom_id FROM request_templates t
        WHERE t.file_id = p.file_id AND t.line_number = p.line_number) AS custom_id,
       p.state, p.response_status, p.response_body, p.response_body_json, p.response_body_raw,
       p.failure_reason, p.failure_message, p.finished_at
FROM page p
ORDER BY p.finished_at, p.id
