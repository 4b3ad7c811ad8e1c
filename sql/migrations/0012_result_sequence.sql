-- 0012: the order in which a running batch's output lines can be followed exactly once
-- (docs/semantics.md, "Following results while a batch runs").
--
-- result_xid is the id of the transaction that recorded the request's completed result
-- (record_results.sql sets it to pg_current_xact_id(); NULL until then). A follower reads
-- the lines in (result_xid, id) order; its cursor also names the transactions that were
-- in progress below its position, whose lines it reads once they commit
-- (live_output.sql). Completion order (finished_at) cannot give that: concurrent writers
-- commit in any order, and nothing says which late lines to look for.
--
-- Cost: adding a nullable column without a default rewrites nothing; the partial index
-- is one more index entry per completed request (its row is not a HOT update anyway:
-- state, which requests_output and requests_errors are partial on, changes in the same
-- write). CREATE INDEX reads the table once and holds writes to it while it builds.
ALTER TABLE requests ADD COLUMN result_xid xid8;

-- Rows completed before this migration have no result_xid: they sort first, as '1' (below
-- every normal transaction id), so a batch running across the upgrade is followed whole.
CREATE INDEX requests_live_output ON requests (batch_id, (coalesce(result_xid, '1'::xid8)), id)
    WHERE state = 'completed';
