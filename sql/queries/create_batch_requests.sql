-- create_batch_requests: the next chunk of a batch's requests: one pending request per
-- template with a line number in (created_through, created_through + chunk], and the
-- batch's created_through moved on in the same statement (NULL once every line exists).
-- Parameters: batch_id, chunk, now (also the new creation_progress_at). Returns created_through as it is now (no row: the
-- batch's requests all exist already).
-- Bounded: at most `chunk` rows per statement, so a 5,000,000-line batch stays within the
-- statement timeout (create_batch runs one transaction per chunk).
-- Idempotent and resumable (a creation repeated or cut short never inserts a request
-- twice): progress and rows commit together, and ON CONFLICT on requests_batch_line makes
-- a chunk written again insert nothing.
-- Locking: the batch row (FOR UPDATE): two writers of one batch take turns, and a retry
-- moving the batch's deadline waits for the chunk (rows take the deadline as it is).
WITH b AS (
    SELECT id, input_file_id, expires_at, total, created_through
    FROM batches
    WHERE id = %(batch_id)s AND created_through IS NOT NULL
    FOR UPDATE
), ins AS (
    INSERT INTO requests (batch_id, file_id, line_number, model, batch_expires_at, not_before)
    SELECT b.id, t.file_id, t.line_number, t.model, b.expires_at, %(now)s
    FROM b
    JOIN request_templates t
      ON t.file_id = b.input_file_id
     AND t.line_number > b.created_through
     AND t.line_number <= b.created_through + %(chunk)s::int
    ORDER BY t.line_number
    ON CONFLICT (batch_id, line_number) DO NOTHING
    RETURNING 1
)
UPDATE batches x
SET created_through = CASE WHEN b.created_through + %(chunk)s::int >= b.total THEN NULL
                           ELSE b.created_through + %(chunk)s::int END,
    creation_progress_at = CASE WHEN b.created_through + %(chunk)s::int >= b.total THEN NULL
                                ELSE %(now)s END
FROM b
WHERE x.id = b.id
RETURNING x.created_through, (SELECT count(*) FROM ins) AS inserted
