-- live_in_progress: the ids of the transactions in progress in this transaction's snapshot
-- (pg_snapshot_xip: top-level ids, those that have one), as text. A follower waits on
-- those below its cursor (live_output.sql). Run in the snapshot of live_output.sql
-- (read_one_snapshot.sql).
SELECT coalesce(array_agg(x::text), '{}') AS xids
FROM pg_snapshot_xip(pg_current_snapshot()) AS x
