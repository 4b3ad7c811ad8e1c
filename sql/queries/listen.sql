-- listen: subscribe a dedicated connection to the wake-up channels: new batches,
-- retries and released rows (fusillade_work), cancellations (fusillade_cancel), and the
-- probe a listener sends itself to learn whether notifications reach it at all
-- (fusillade_probe; they do not through PgBouncer in transaction pooling).
LISTEN fusillade_work;
LISTEN fusillade_cancel;
LISTEN fusillade_probe
