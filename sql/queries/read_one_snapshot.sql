-- read_one_snapshot: the statements after this one, in this transaction, see one snapshot
-- (REPEATABLE READ, read only). First statement of a transaction that must read what it
-- returns and the snapshot's in-progress transactions at one moment (live_output.sql).
SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY
