-- insert_batch: the batch row; its output and error files are inserted just before.
-- Parameters: id, owner, input_file_id, output_file_id, error_file_id, endpoint,
--             completion_window, metadata (jsonb), created_at, expires_at, total, models,
--             output_expires_at (null: the results are kept by the retention rule).
-- created_through starts at 0: the requests follow in chunks (create_batch_requests.sql),
-- each moving creation_progress_at on.
-- ON CONFLICT: creation is idempotent for a given batch id (see create_batch).
INSERT INTO batches (id, owner, input_file_id, output_file_id, error_file_id, endpoint,
                     completion_window, metadata, created_at, expires_at, total, models,
                     created_through, creation_progress_at, output_expires_at)
VALUES (%(id)s, %(owner)s, %(input_file_id)s, %(output_file_id)s, %(error_file_id)s,
        %(endpoint)s, %(completion_window)s, %(metadata)s, %(created_at)s, %(expires_at)s,
        %(total)s, %(models)s, 0, %(created_at)s, %(output_expires_at)s)
ON CONFLICT (id) DO NOTHING
