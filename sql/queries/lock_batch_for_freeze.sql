-- lock_batch_for_freeze: the batch row, locked before freeze_batch computes the counts
-- in a statement of its own, so that statement's snapshot is taken after the lock.
-- Why: a billed late success may replace canceled on a row of a frozen batch, and it
-- updates the batch row's frozen counts in the same statement (record_results.sql,
-- "repaired"). Either that write holds the row first, and the freeze, waiting here,
-- then counts the success; or the freeze holds it first, and the repair, waiting on the
-- row, then adds the success to the frozen counts.
-- NO KEY UPDATE, the lock the freeze's UPDATE takes anyway: FOR UPDATE would also block
-- the FOR KEY SHARE of the foreign-key checks on batch_state_counts, and a writer whose
-- counter trigger waited on it while the fold waited on that writer's counter rows
-- would deadlock.
-- Parameters: id. Returns the id when the batch exists.
SELECT id
FROM batches
WHERE id = %(id)s
FOR NO KEY UPDATE
