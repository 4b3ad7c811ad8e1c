-- database_time: the database server's wall clock, the one clock every process of a
-- deployment takes its times from (fusillade/runtime/clock.py): heartbeats, claims,
-- leases, retry times and batch deadlines are compared across hosts.
-- clock_timestamp(), not now(): the time of this call, not of its transaction's start.
-- Parameters: none. Locking: none.
SELECT clock_timestamp() AS now
