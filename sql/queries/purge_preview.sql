-- purge_preview: what a purge would remove now (purge --dry-run), counted without
-- changing anything. Parameters: now, finished_before (NULL: keep finished batches),
-- stopped_before.
WITH gone_files AS (
    SELECT f.id FROM files f
    WHERE f.purpose = 'batch' AND f.purged_at IS NULL
      AND (f.deleted_at IS NOT NULL OR f.expires_at <= %(now)s)
      AND NOT EXISTS (SELECT 1 FROM batches b
                      WHERE b.input_file_id = f.id AND b.frozen_completed IS NULL)
), old_batches AS (
    SELECT id FROM batches
    WHERE purged_at IS NULL AND frozen_completed IS NOT NULL
      AND (
          (%(finished_before)s::timestamptz IS NOT NULL
           AND coalesce(last_finished_at, created_at) < %(finished_before)s::timestamptz)
          OR (output_expires_at IS NOT NULL AND output_expires_at <= %(now)s)
      )
    UNION ALL
    -- settled batches nobody read (not frozen yet): the purge freezes them first
    SELECT b.id FROM batches b
    WHERE b.frozen_completed IS NULL AND b.purged_at IS NULL
      AND b.expires_at < %(finished_before)s::timestamptz
      AND NOT EXISTS (SELECT 1 FROM requests r WHERE r.batch_id = b.id
                      AND r.state IN ('pending', 'claimed', 'processing'))
      AND coalesce((SELECT max(r.finished_at) FROM requests r WHERE r.batch_id = b.id),
                   b.created_at) < %(finished_before)s::timestamptz
)
SELECT
    (SELECT count(*) FROM files
     WHERE deleted_at IS NULL AND expires_at IS NOT NULL AND expires_at <= %(now)s)
        AS expired_files,
    (SELECT count(*) FROM gone_files) AS purged_files,
    (SELECT count(*) FROM request_templates t WHERE t.file_id IN (SELECT id FROM gone_files))
        AS templates,
    (SELECT count(*) FROM old_batches) AS batches,
    (SELECT count(*) FROM requests r WHERE r.batch_id IN (SELECT id FROM old_batches))
        AS requests,
    (SELECT count(*) FROM daemons
     WHERE status <> 'running' AND stopped_at < %(stopped_before)s) AS daemons
