-- 0004_response_body_raw: keep upstream bodies that text cannot hold, and the failure
-- reason of a result the database refused.
--
-- Append-only: once shipped, this file is never edited (see 0001_initial.sql).
--
-- response_body_raw: the exact bytes of the upstream's body when they are not valid UTF-8
-- or hold a NUL byte (PostgreSQL text can hold neither). response_body then holds a
-- rendering (each invalid sequence and each NUL as U+FFFD; fusillade/core/bodies.py), so
-- every reader of text still finds text. NULL, as for every row before this migration:
-- response_body is the body, exactly. docs/semantics.md, "Response bodies".
-- A NULL default: adding the column rewrites nothing.
--
-- failure_reason 'unstorable': the database refused a result (a data error that no
-- retry can fix); the result writer records the request failed with this reason instead,
-- so one such result never holds up the others (fusillade/runtime/writer.py).
-- The check is only widened, so every existing row meets it: NOT VALID skips the scan
-- of the whole table under this statement's ACCESS EXCLUSIVE lock. New and updated rows
-- are checked as before.

ALTER TABLE requests ADD COLUMN response_body_raw bytea NULL;

ALTER TABLE requests DROP CONSTRAINT requests_failure_reason_check;
ALTER TABLE requests ADD CONSTRAINT requests_failure_reason_check CHECK (failure_reason IN (
    'http_status', 'timeout', 'connect', 'builder', 'cancelled', 'expired', 'lost', 'unstorable'
)) NOT VALID;
