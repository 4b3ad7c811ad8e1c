"""Crash: SIGKILL the daemon process three times during a 5,000-request batch.

Required: every request ends in exactly one terminal state, the output holds each
``custom_id`` once, nothing is lost; the upstream saw each request at least once and at
most once plus what was in flight at each kill. "In flight" is measured exactly: the rows
the dead daemon still held (claimed or processing) once it was gone. Only those can be
sent again; everything it had recorded must never be.
"""

from __future__ import annotations

from collections import Counter

import pytest
import trio
from faultkit import held_by, start_daemon, states
from helpers import make_batch, result_lines, wait_status

from fusillade.core.models import BatchStatus
from fusillade.mock_upstream import Behaviour, MockUpstream
from fusillade.store.postgres import PostgresRepository

pytestmark = pytest.mark.slow

N = 5000
KILLS = 3
CONCURRENCY = 32
STALE_AFTER = 1.0


async def test_sigkill_three_times_during_5000_requests_loses_nothing(
    repo: PostgresRepository, database_url: str, mock_upstream: MockUpstream, nursery: trio.Nursery
) -> None:
    mock_upstream.config.default = Behaviour(latency=0.01)
    batch = await make_batch(repo, N)
    flags = {"concurrency": CONCURRENCY, "stale_after": STALE_AFTER}
    held_at_kills: list[int] = []
    for kill in range(KILLS):
        daemon = await start_daemon(nursery, database_url, mock_upstream.url, **flags)
        target = (kill + 1) * N // (KILLS + 1)
        with trio.fail_after(60):
            await mock_upstream.wait_until(lambda s, t=target: s.total >= t)
        daemon.kill()
        await daemon.process.wait()
        # What the dead daemon still holds: the only requests that may be sent twice.
        held_at_kills.append(await held_by(database_url, daemon.id))
    last = await start_daemon(nursery, database_url, mock_upstream.url, **flags)
    view = await wait_status(repo, batch, timeout=90)
    last.terminate()
    assert await last.process.wait() == 0

    # Every request ends in exactly one terminal state.
    assert view.status is BatchStatus.COMPLETED
    assert (view.counts.completed, view.counts.failed, view.counts.canceled) == (N, 0, 0)
    assert await states(database_url, batch) == {"completed": N}
    # The output holds each custom_id exactly once.
    lines = await result_lines(repo, batch)
    ids = Counter(line.custom_id for line in lines)
    assert len(lines) == N and set(ids) == {f"c{i}" for i in range(N)}
    assert max(ids.values()) == 1
    # The upstream saw each request at least once, and at most once plus the held rows.
    seen = mock_upstream.stats.by_request_id
    assert len(seen) == N and min(seen.values()) >= 1
    resent = sum(seen.values()) - N
    assert resent <= sum(held_at_kills), (resent, held_at_kills)
    print(f"kills {KILLS}, held at kills {held_at_kills}, sent again {resent}")
