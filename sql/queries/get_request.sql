-- get_request: one request with its template, if its batch belongs to owner.
-- Parameters: id, owner (null: any owner).
SELECT r.id, r.batch_id, t.custom_id, r.model, r.state, r.attempts, r.line_number,
       r.response_status, r.failure_reason, r.failure_message, r.claimed_at,
       r.finished_at, r.response_body, r.response_body_raw, t.path, t.method, t.body AS request_body
FROM requests r
JOIN batches b ON b.id = r.batch_id
JOIN request_templates t ON t.file_id = r.file_id AND t.line_number = r.line_number
WHERE r.id = %(id)s AND (%(owner)s::text IS NULL OR b.owner = %(owner)s::text)
