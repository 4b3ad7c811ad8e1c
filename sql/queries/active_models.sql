-- active_models: the models of batches that may still have work, so the claim loop
-- knows which models to ask for (unlisted models get the default concurrency).
-- Parameters: now. Uses batches_unfrozen.
SELECT DISTINCT unnest(models) AS model
FROM batches
WHERE frozen_completed IS NULL
  AND cancelling_at IS NULL
  AND expired_at IS NULL
  AND expires_at > %(now)s
