-- 0008_batch_escalation: a batch that will miss its deadline at the current rate is
-- escalated (claimed ahead of its turn), and the batch object says so (issue 13, item 5).
--
-- Append-only: once shipped, this file is never edited (see 0001_initial.sql).
--
-- escalated_at is when a daemon's maintenance found the batch would not finish within its
-- window at the rate it was finishing requests (fusillade.core.deadlines.will_miss); NULL
-- when it is on course, and again once it is back on course. Written only on a change
-- (set_escalation.sql), read with the claimable batches (claimable_batches.sql) and with
-- the batch row (get_batch.sql, list_batches.sql).
-- A nullable column without a default: adding it rewrites nothing.

ALTER TABLE batches ADD COLUMN escalated_at timestamptz NULL;
