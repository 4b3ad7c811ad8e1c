-- listen: subscribe a dedicated connection to the wake-up channels: new batches,
-- retries and released rows (fusillade_work) and cancellations (fusillade_cancel).
LISTEN fusillade_work;
LISTEN fusillade_cancel
