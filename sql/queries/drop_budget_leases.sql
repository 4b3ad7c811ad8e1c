-- drop_budget_leases: a stopping daemon gives its parts of every budget back.
-- Parameters: daemon_id.
DELETE FROM budget_leases WHERE daemon_id = %(daemon_id)s
