-- 0009_budget_leases: which daemons share each rate budget (issue 13, item 3).
--
-- Append-only: once shipped, this file is never edited (see 0001_initial.sql).
--
-- A budget (an upstream's, or an (upstream, model)'s: max_in_flight, rpm, tpm) is the
-- deployment's, not each daemon's. A daemon that sends to a budgeted scope holds a lease
-- on it, refreshed with its heartbeat; each daemon uses 1/N of the budget, N being the
-- holders whose daemon is running and not stale. A stopped daemon drops its leases; a
-- dead one's stop counting once its heartbeat is stale (the daemons row says so), and
-- the next refresh of any holder deletes them. `since` is when this daemon first took
-- the lease: a lease younger than one heartbeat is not used while others hold the scope
-- (they have not yet shrunk their part), so the parts never add up to more than the
-- budget (docs/scheduling.md, "Across daemons").

CREATE TABLE budget_leases (
    scope     text        NOT NULL,
    daemon_id uuid        NOT NULL REFERENCES daemons (id) ON DELETE CASCADE,
    since     timestamptz NOT NULL,
    PRIMARY KEY (scope, daemon_id)
);

CREATE INDEX budget_leases_daemon ON budget_leases (daemon_id);
