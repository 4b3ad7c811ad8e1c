"""Replicas: three daemon processes on one database, per-model limit L each.

Required: the upstream never sees more than 3L concurrent requests for a model, no
request is completed twice, and when one replica is SIGKILLed its claimed requests are
reclaimed within the stale threshold (measured: from the kill until no row is held by the
dead daemon's id, at most ``stale_after + maintenance_interval`` plus a margin for a busy
machine).
"""

from __future__ import annotations

from collections import Counter

import pytest
import trio
from faultkit import daemon_status, held_by, poll, rows, start_daemon, states
from helpers import make_batch, result_lines, wait_status

from fusillade.core.models import BatchStatus
from fusillade.mock_upstream import Behaviour, MockUpstream
from fusillade.store.postgres import PostgresRepository

pytestmark = pytest.mark.slow

N = 900
LIMIT = 4  # L: per daemon, per model
STALE_AFTER = 2.0
MAINTENANCE = 0.25
MARGIN = 1.5  # scheduling on a loaded 2-core machine; the measured time is printed


async def test_three_replicas_respect_3l_and_reclaim_a_killed_one_in_time(
    repo: PostgresRepository, database_url: str, mock_upstream: MockUpstream, nursery: trio.Nursery
) -> None:
    mock_upstream.config.default = Behaviour(latency=0.05)
    batch = await make_batch(repo, N)
    flags = {
        "concurrency": LIMIT,
        "stale_after": STALE_AFTER,
        "maintenance_interval": MAINTENANCE,
        "heartbeat_interval": 0.25,
    }
    daemons = [await start_daemon(nursery, database_url, mock_upstream.url, **flags) for _ in "abc"]
    with trio.fail_after(60):
        await mock_upstream.wait_until(lambda s: s.total >= N // 4)
    victim = daemons[0]
    victim.kill()
    killed_at = trio.current_time()
    await victim.process.wait()
    held = await held_by(database_url, victim.id)
    assert held > 0, "the victim held nothing: the reclaim would not be measured"

    async def released() -> bool:
        return await held_by(database_url, victim.id) == 0

    await poll(released, timeout=30, interval=0.02, what="the dead daemon's rows reclaimed")
    reclaimed_after = trio.current_time() - killed_at
    assert reclaimed_after <= STALE_AFTER + MAINTENANCE + MARGIN, reclaimed_after
    assert reclaimed_after >= STALE_AFTER / 2  # by the heartbeat rule, not by chance
    assert await daemon_status(database_url, victim.id) == "dead"

    view = await wait_status(repo, batch, timeout=90)
    for daemon in daemons[1:]:
        daemon.terminate()
    for daemon in daemons[1:]:
        assert await daemon.process.wait() == 0

    assert view.status is BatchStatus.COMPLETED
    assert view.counts.completed == N
    assert await states(database_url, batch) == {"completed": N}
    ids = Counter(line.custom_id for line in await result_lines(repo, batch))
    assert len(ids) == N and max(ids.values()) == 1  # recorded once each
    seen = mock_upstream.stats.by_request_id
    assert len(seen) == N and sum(seen.values()) - N <= held  # only the victim's sent twice
    peak = mock_upstream.stats.peak_in_flight["m"]
    assert peak <= 3 * LIMIT, peak
    # All three shared the work (the limit was tested against three, not one).
    owners = await rows(
        database_url,
        "SELECT daemon_id, count(*) FROM requests WHERE batch_id = %s GROUP BY daemon_id",
        batch,
    )
    print(f"held {held}, reclaimed after {reclaimed_after:.2f} s, peak {peak}, owners {owners}")
