"""The daemons' maintenance purges beside a busy daemon: an old finished batch's requests
go in chunks while the daemon claims and finishes a running batch, whose rows are never
touched; a long-stopped daemon's row goes, a running one's stays."""

from __future__ import annotations

from datetime import timedelta
from uuid import UUID

import psycopg
import trio
from helpers import daemon_config, make_batch, poll_until, result_lines, view_of

from fusillade.core.models import BatchStatus
from fusillade.mock_upstream import Behaviour, MockConfig, serve_mock_upstream
from fusillade.runtime.daemon import Daemon
from fusillade.store.postgres import PostgresRepository

OLD_ROWS = 6000


def count(conn: psycopg.Connection[tuple[int]], batch: UUID) -> int:
    row = conn.execute("SELECT count(*) FROM requests WHERE batch_id = %s", (batch,)).fetchone()
    assert row is not None
    return int(row[0])


async def test_a_purge_beside_a_busy_daemon(
    repo: PostgresRepository, nursery: trio.Nursery, database_url: str
) -> None:
    upstream = await nursery.start(serve_mock_upstream, MockConfig(default=Behaviour(latency=0.1)))
    old = await make_batch(repo, OLD_ROWS)
    with psycopg.connect(database_url, autocommit=True) as conn:
        # the old batch finished two days ago; a daemon stopped eight days ago
        conn.execute(
            "UPDATE requests SET state = 'completed', finished_at = now() - interval '2 days', "
            "response_status = 200, response_body = '{}' WHERE batch_id = %s",
            (old,),
        )
        conn.execute(
            "INSERT INTO daemons (id, hostname, pid, version, status, started_at, heartbeat_at,"
            " stopped_at) VALUES (gen_random_uuid(), 'h', 1, 't', 'stopped',"
            " now() - interval '9 days', now() - interval '8 days', now() - interval '8 days')"
        )
        frozen = await view_of(repo, old)  # the read freezes it
        assert frozen.status is BatchStatus.COMPLETED
        busy = await make_batch(repo, 400)
        config = daemon_config(
            upstream,
            finished_batch_retention=timedelta(days=1),
            purge_chunk=500,
            purge_chunks_per_round=1,
        )
        daemon = Daemon(repo, config)
        await nursery.start(daemon.run)

        seen_overlap = False

        async def sample() -> tuple[int, int]:
            left = await trio.to_thread.run_sync(count, conn, old)
            assert await trio.to_thread.run_sync(count, conn, busy) == 400  # never touched
            view = await view_of(repo, busy)
            return left, view.counts.completed

        def both_done(s: tuple[int, int]) -> bool:
            nonlocal seen_overlap
            left, completed = s
            # the busy batch makes progress while the purge is half-way
            seen_overlap = seen_overlap or (0 < left < OLD_ROWS and 0 < completed < 400)
            return left == 0 and completed == 400

        await poll_until(sample, both_done, timeout=60)
        assert seen_overlap
        lines = await result_lines(repo, busy)
        assert sorted(line.custom_id for line in lines) == sorted(f"c{i}" for i in range(400))
        after = await view_of(repo, old)
        assert after.counts == frozen.counts  # still readable, counts kept
        rows = conn.execute("SELECT status FROM daemons ORDER BY status").fetchall()
        assert rows == [("running",)]  # ours; the long-stopped one is gone
        daemon.stop()
