-- 0013_retention: expiry of files and results, and purging old rows (issue 15, item 3).
--
-- Append-only: once shipped, this file is never edited (see 0001_initial.sql).
--
-- files.expires_at (0001) is now set: by an upload's `expires_after`, and for a batch's
-- output and error files by the batch's `output_expires_after`. Maintenance
-- (fusillade.runtime.upkeep, purge_*.sql) then, in bounded chunks of short
-- transactions that never touch an unfinished request:
--   1. marks files past expires_at deleted (deleted_at = expires_at): they answer 404;
--   2. removes the content of deleted input files that no unfinished batch reads:
--      the templates' bodies and API keys are blanked (custom_id, line and model stay
--      while a finished batch's results, which name them, are kept), and the templates
--      are deleted once no batch with stored requests reads the file.
--      files.purged_through is the line cursor of that walk; files.purged_at says the
--      file's content is gone (NULL again when its last batch's requests go, so the
--      remaining rows are deleted);
--   3. deletes the requests of finished (frozen) batches that finished before the
--      retention ([retention] finished_batches) or whose output expired
--      (batches.output_expires_at); batches.purged_at says they are gone. The batch row
--      stays with its frozen counts; its output and error files are marked deleted;
--   4. deletes daemons rows stopped or dead longer than [retention] stopped_daemons.

ALTER TABLE files ADD COLUMN purged_at timestamptz NULL;
ALTER TABLE files ADD COLUMN purged_through integer NOT NULL DEFAULT 0;
ALTER TABLE batches ADD COLUMN output_expires_at timestamptz NULL;
ALTER TABLE batches ADD COLUMN purged_at timestamptz NULL;

-- 1: live files with an expiry.
CREATE INDEX files_expiring ON files (expires_at)
    WHERE deleted_at IS NULL AND expires_at IS NOT NULL;
-- 2: deleted input files whose content is still there.
CREATE INDEX files_to_purge ON files (deleted_at)
    WHERE purpose = 'batch' AND deleted_at IS NOT NULL AND purged_at IS NULL;
-- 2: "does a batch still read this file" (the FK had no index on this side).
CREATE INDEX batches_input_file ON batches (input_file_id);
-- 3: finished batches whose requests are still stored, by when they finished, and by
-- when their output expires.
CREATE INDEX batches_finished_unpurged ON batches (last_finished_at)
    WHERE frozen_completed IS NOT NULL AND purged_at IS NULL;
CREATE INDEX batches_output_expiring ON batches (output_expires_at)
    WHERE output_expires_at IS NOT NULL AND purged_at IS NULL;
-- 4: stopped and dead daemons by when they stopped.
CREATE INDEX daemons_stopped ON daemons (stopped_at) WHERE status <> 'running';
