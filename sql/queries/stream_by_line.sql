-- stream_by_line: a page of a batch's requests in input order, for `run --ordered`;
-- keyset on line_number, never OFFSET. Parameters: batch_id, after_line, limit. Uses
-- requests_batch_line (batch_id, line_number), then request_templates_pkey once per row
-- of the page (the page is taken first, for the reason given in stream_output.sql).
-- Every state, on purpose: the caller skips the unfinished rows (none once the batch is
-- finished). A filter on state let the planner read requests_batch_state or a partial
-- index (requests_errors) and sort the batch's rows for every page, quadratic in the
-- batch when its size is misjudged (a batch created since the last ANALYZE).
WITH page AS MATERIALIZED (
    SELECT r.id, r.file_id, r.line_number, r.state, r.response_status, r.response_body,
           r.response_body_json, r.response_body_raw, r.failure_reason, r.failure_message,
           r.finished_at
    FROM requests r
    WHERE r.batch_id = %(batch_id)s
      AND r.line_number > %(after_line)s
    ORDER BY r.line_number
    LIMIT %(limit)s
)
SELECT p.id,
       (SELECT t.custom_id FROM request_templates t
        WHERE t.file_id = p.file_id AND t.line_number = p.line_number) AS custom_id,
       p.state, p.response_status, p.response_body, p.response_body_json, p.response_body_raw,
       p.failure_reason, p.failure_message, p.finished_at, p.line_number
FROM page p
ORDER BY p.line_number
