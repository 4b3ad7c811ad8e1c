-- 0005_claim_indexes: the claim walks the batches that may be claimed, and keeps rows
-- waiting for a retry out of the index it reads in line order (issue 11, item 6).
--
-- Append-only: once shipped, this file is never edited (see 0001_initial.sql).
--
-- Why: requests_claim (0001) held every pending row in deadline order, and the claim
-- filtered out, one index entry at a time, the rows it may not take: those of a
-- cancelled or expired batch that no sweep had reached yet, and those whose retry was
-- not due. They sit at the front of the order (the batches being worked on have the
-- earliest deadlines): 140,000 of them made every claim take 130-190 ms, and a
-- cancelled batch of 25,000,000 rows would have made claims hit the statement timeout.
--
-- Now (claim.sql): per model, the claim walks batches_claimable in deadline order and,
-- per batch, reads its rows from two partial indexes that split the pending rows by a
-- predicate the clock does not enter into:
--   requests_claim_fresh: attempts = budget_base, no attempt of the current budget yet
--     (new rows, released rows, rows a user retried). They were made due when written
--     (not_before is the time of that write), so they are read in line order.
--   requests_claim_retry: attempts > budget_base, pending again after an attempt (a
--     retry backing off, or a row reclaimed from a dead daemon, due at once). They are
--     read by not_before, so rows not yet due are never visited.
-- requests_budget (budget_base <= attempts) makes the two predicates cover every pending
-- row exactly once, whichever query wrote it, so no writer has to set anything new.
-- A cancelled, expired or frozen batch leaves batches_claimable, so its unswept rows are
-- never visited at all. Design notes: docs/performance.md (P7) and docs/architecture.md.
--
-- Cost of the migration: each CREATE INDEX reads the table once and holds writes to it
-- while it builds (the migrator runs a file in one transaction, so not CONCURRENTLY).

-- The batches whose rows the claim may take, in the claim's order: earliest deadline,
-- then batch age (uuid7). Frozen batches are settled (freeze_batch.sql checks nothing is
-- unsettled; a retry unfreezes), so they have no pending rows to find.
CREATE INDEX batches_claimable ON batches (expires_at, id)
    WHERE frozen_completed IS NULL AND cancelling_at IS NULL AND expired_at IS NULL;

-- One batch's rows of one model in line order. The batch's deadline is no longer a key:
-- the walk over batches_claimable orders the batches.
CREATE INDEX requests_claim_fresh ON requests (batch_id, model, line_number)
    WHERE state = 'pending' AND attempts = budget_base;

-- One batch's rows of one model in the order they come due (line number breaks ties).
CREATE INDEX requests_claim_retry ON requests (batch_id, model, not_before, line_number)
    WHERE state = 'pending' AND attempts > budget_base;

-- No query reads it any more; it only cost every write to a pending row.
DROP INDEX requests_claim;
