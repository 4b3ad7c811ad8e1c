-- stream_output: a page of a batch's completed requests in completion order; keyset on
-- (finished_at, id), never OFFSET. Parameters: batch_id, after_time, after_id, limit.
-- Uses requests_output.
SELECT r.id, t.custom_id, r.state, r.response_status, r.response_body, r.failure_reason,
       r.failure_message, r.finished_at
FROM requests r
JOIN request_templates t ON t.file_id = r.file_id AND t.line_number = r.line_number
WHERE r.batch_id = %(batch_id)s
  AND r.state = 'completed'
  AND (r.finished_at, r.id) > (%(after_time)s::timestamptz, %(after_id)s::uuid)
ORDER BY r.finished_at, r.id
LIMIT %(limit)s
