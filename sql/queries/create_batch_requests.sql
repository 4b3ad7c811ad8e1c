-- create_batch_requests: one pending request per template, in one INSERT ... SELECT.
-- Parameters: batch_id, file_id, expires_at, now.
-- ON CONFLICT on requests_batch_line makes a repeated call insert nothing (lesson 3:
-- a re-delivered "create batch" must not insert every request twice).
INSERT INTO requests (batch_id, file_id, line_number, model, batch_expires_at, not_before)
SELECT %(batch_id)s, t.file_id, t.line_number, t.model, %(expires_at)s, %(now)s
FROM request_templates t
WHERE t.file_id = %(file_id)s
ORDER BY t.line_number
ON CONFLICT (batch_id, line_number) DO NOTHING
