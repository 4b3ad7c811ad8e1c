-- insert_file: create a file row before its templates are copied in.
-- Parameters: id, owner, filename, purpose, batch_id (null for input files), created_at,
--             expires_at. Locking: none (new row).
INSERT INTO files (id, owner, filename, purpose, batch_id, created_at, expires_at)
VALUES (%(id)s, %(owner)s, %(filename)s, %(purpose)s, %(batch_id)s, %(created_at)s,
        %(expires_at)s)
