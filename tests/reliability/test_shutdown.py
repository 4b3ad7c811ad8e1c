"""Graceful shutdown: SIGTERM a daemon process mid-batch.

Required: in-flight requests finish or are released at once, and another daemon takes
them without waiting for a lease. The requests are held by the mock upstream, so they are
surely in flight at the signal; the second daemon's ``stale_after`` is an hour, so only
the release (never the stale reclaim) can give it the work.
"""

from __future__ import annotations

import pytest
import trio
from faultkit import IN_FLIGHT, daemon_status, held_by, rows, start_daemon, states
from helpers import make_batch, wait_status

from fusillade.core.models import BatchStatus
from fusillade.mock_upstream import Behaviour, MockUpstream
from fusillade.store.postgres import PostgresRepository

pytestmark = pytest.mark.slow

N = 20
LIMIT = 8
GRACE = 0.5
HOUR = 3600.0


async def test_sigterm_releases_in_flight_work_to_another_daemon_at_once(
    repo: PostgresRepository, database_url: str, mock_upstream: MockUpstream, nursery: trio.Nursery
) -> None:
    mock_upstream.config.default = Behaviour(hold=True)
    batch = await make_batch(repo, N)
    flags = {"concurrency": LIMIT, "stale_after": HOUR, "shutdown_grace": GRACE}
    first = await start_daemon(nursery, database_url, mock_upstream.url, **flags)
    with trio.fail_after(30):
        await mock_upstream.wait_until(lambda s: s.in_flight_total == LIMIT)
    before = dict(
        await rows(
            database_url,
            "SELECT id, attempts - budget_base FROM requests WHERE daemon_id = %s",
            first.id,
        )
    )
    assert len(before) == LIMIT and set(before.values()) == {1}

    signalled = trio.current_time()
    first.terminate()
    assert await first.process.wait() == 0
    stopped_after = trio.current_time() - signalled
    # Released at once: after the grace period, not after any lease or stale threshold.
    assert stopped_after < GRACE + 3.0, stopped_after
    assert await held_by(database_url, first.id) == 0
    assert await daemon_status(database_url, first.id) == "stopped"
    after = dict(
        await rows(
            database_url,
            "SELECT id, attempts - budget_base FROM requests WHERE id = ANY(%s) AND state = %s",
            list(before),
            "pending",
        )
    )
    assert after == {request: 0 for request in before}  # the attempt was refunded
    assert await states(database_url, batch) == {"pending": N}

    mock_upstream.config.default = Behaviour()
    mock_upstream.release_held()  # the first daemon's abandoned requests end too
    second = await start_daemon(nursery, database_url, mock_upstream.url, **flags)
    taken_over = trio.current_time()
    view = await wait_status(repo, batch, timeout=30)
    took = trio.current_time() - taken_over
    second.terminate()
    assert await second.process.wait() == 0

    assert view.status is BatchStatus.COMPLETED and view.counts.completed == N
    assert await states(database_url, batch) == {"completed": N}
    assert await held_by(database_url, second.id) == 0
    assert not set(IN_FLIGHT) & set(await states(database_url, batch))
    seen = mock_upstream.stats.by_request_id
    # The held requests were sent twice (once per daemon), the others once.
    assert sorted(seen.values()) == [1] * (N - LIMIT) + [2] * LIMIT
    assert {request for request, count in seen.items() if count == 2} == {
        str(request) for request in before
    }
    print(f"stopped {stopped_after:.2f} s after SIGTERM; second daemon finished in {took:.2f} s")
