"""A daemon on a host whose clock is off by more than ``stale_after`` is not declared dead.

Every time a daemon stores or compares is the database's (``fusillade.runtime.clock``):
here this daemon's host clock runs 40 s behind, its peer (played by the test, with the
database's clock, as every correct host has) runs maintenance every 0.1 s with
``stale_after`` 2 s. Nothing may be reclaimed or sent twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
import trio
from helpers import daemon_config, make_batch, wait_status

import fusillade.runtime.clock
from fusillade.core.models import BatchStatus
from fusillade.mock_upstream import Behaviour, MockUpstream
from fusillade.runtime.daemon import Daemon
from fusillade.store.interface import ReclaimStats
from fusillade.store.postgres import PostgresRepository

SKEW = timedelta(seconds=-40)
STALE_AFTER = 2.0


def _skewed_host_clock() -> Callable[[], datetime]:
    return lambda: datetime.now(UTC) + SKEW


async def test_a_daemon_whose_clock_is_skewed_past_stale_after_is_not_declared_dead(
    repo: PostgresRepository,
    mock_upstream: MockUpstream,
    nursery: trio.Nursery,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert abs(SKEW.total_seconds()) > STALE_AFTER
    monkeypatch.setattr(fusillade.runtime.clock, "host_time", _skewed_host_clock())
    mock_upstream.config.default = Behaviour(latency=0.3)  # rows stay in flight a while
    batch = await make_batch(repo, 24)
    config = daemon_config(
        mock_upstream,
        default_concurrency=4,
        stale_after=STALE_AFTER,
        heartbeat_interval=0.25,
        maintenance_interval=0.25,
        request_timeout=5.0,
    )
    daemon = Daemon(repo, config)
    reclaimed: list[ReclaimStats] = []

    def peer_maintenance() -> None:
        """What a daemon on a host with a correct clock does every round."""
        now = repo.database_time()
        reclaimed.append(
            repo.reclaim_dead(
                now=now, stale_before=now - timedelta(seconds=STALE_AFTER), max_attempts=3
            )
        )
        # request_timeout 5 s: 1.5 x 5 + 60 s, as the daemon computes it
        reclaimed.append(
            repo.reclaim_timed_out(
                now=now, claimed_before=now - timedelta(seconds=67.5), max_attempts=3
            )
        )

    async def peer() -> None:
        while True:
            await trio.to_thread.run_sync(peer_maintenance)
            await trio.sleep(0.1)  # the peer's maintenance interval

    with caplog.at_level(logging.WARNING, logger="fusillade.clock"):
        await nursery.start(daemon.run)
        nursery.start_soon(peer)
        view = await wait_status(repo, batch, BatchStatus.COMPLETED, timeout=60)

    assert view.counts.completed == 24
    assert sum(s.requeued + s.failed for s in reclaimed) == 0, "rows were reclaimed"
    assert len(reclaimed) >= 10  # the peer ran many rounds while rows were in flight
    assert mock_upstream.stats.total == 24  # nothing sent twice
    assert daemon.statistics().lost_races == 0
    # The host's offset is noticed and said once.
    assert any("off the database's" in r.getMessage() for r in caplog.records)
    daemon.stop()
