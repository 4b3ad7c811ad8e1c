-- insert_webhook_event: the outbox row of a batch that has just become terminal, in the
-- transaction of its freeze (store/postgres/_batches.py). Due at once.
-- Parameters: id, owner, type, batch_id, batch_version, created_at. One event per
-- (batch, version): a second freeze of the same version cannot happen, and this guard
-- makes it harmless if it did.
INSERT INTO webhook_events (id, owner, type, batch_id, batch_version, created_at,
                            next_attempt_at)
VALUES (%(id)s, %(owner)s, %(type)s, %(batch_id)s, %(batch_version)s, %(created_at)s,
        %(created_at)s)
ON CONFLICT (batch_id, batch_version) DO NOTHING
