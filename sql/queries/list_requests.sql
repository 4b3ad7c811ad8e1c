-- list_requests: a page of a batch's requests in line order, optionally by state;
-- keyset on line_number. Parameters: batch_id, states (text[] or null), after_line, limit.
-- Uses requests_batch_line.
SELECT r.id, r.batch_id, t.custom_id, r.model, r.state, r.attempts, r.line_number,
       r.response_status, r.failure_reason, r.failure_message, r.claimed_at,
       r.finished_at
FROM requests r
JOIN request_templates t ON t.file_id = r.file_id AND t.line_number = r.line_number
WHERE r.batch_id = %(batch_id)s
  AND r.line_number > %(after_line)s
  AND (%(states)s::text[] IS NULL OR r.state = ANY(%(states)s::text[]))
ORDER BY r.line_number
LIMIT %(limit)s
