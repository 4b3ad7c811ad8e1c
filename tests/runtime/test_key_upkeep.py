"""The daemons' maintenance forgets idempotency keys past their time, in chunks."""

from __future__ import annotations

import psycopg
import trio
from helpers import daemon_config, poll_until

from fusillade.mock_upstream import MockUpstream
from fusillade.runtime.daemon import Daemon
from fusillade.store.postgres import PostgresRepository

OLD = """
INSERT INTO idempotency_keys (owner, key, fingerprint, object_id, created_at)
SELECT 'alice', 'old-' || i, 'batch:x', gen_random_uuid(),
       now() - interval '24 hours' - i * interval '1 second'
FROM generate_series(1, 2500) AS i
"""
LIVE = """
INSERT INTO idempotency_keys (owner, key, fingerprint, object_id, created_at)
VALUES ('alice', 'live', 'batch:x', gen_random_uuid(), now() - interval '23 hours')
"""


async def test_maintenance_forgets_expired_keys(
    repo: PostgresRepository, mock_upstream: MockUpstream, nursery: trio.Nursery, database_url: str
) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(OLD)  # more than one chunk (1,000) of them
        conn.execute(LIVE)

        def keys() -> list[str]:
            return [row[0] for row in conn.execute("SELECT key FROM idempotency_keys")]

        daemon = Daemon(repo, daemon_config(mock_upstream))
        await nursery.start(daemon.run)
        assert await poll_until(keys, lambda left: len(left) < 2, timeout=30) == ["live"]
        daemon.stop()
