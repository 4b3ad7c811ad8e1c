"""Three daemons on one PostgreSQL share one rate budget, against an upstream that
enforces its limit as OpenAI does (per minute, quantized to one second).

The deployment may send 180 requests a minute (3 a second); the upstream allows 360 (6 in
any one second). Each daemon leases its part through PostgreSQL, so together they pace
at 3 a second: 30 requests take at least (30 - 3) / 3 = 9 s (the 3: each daemon's first
request goes when its part is granted), and no request is refused.
"""

from __future__ import annotations

import trio
from helpers import daemon_config, make_batch, wait_status

from fusillade.core.models import BatchStatus
from fusillade.core.scheduling.budget import BudgetLimits
from fusillade.mock_upstream import Behaviour, MockUpstream
from fusillade.runtime.daemon import Daemon
from fusillade.store.postgres import PostgresRepository


async def test_three_daemons_stay_inside_one_rpm_budget(
    repo: PostgresRepository, mock_upstream: MockUpstream, nursery: trio.Nursery
) -> None:
    mock_upstream.config.default = Behaviour(rpm=360)
    batch = await make_batch(repo, 30)
    config = daemon_config(
        mock_upstream, default_concurrency=8, upstream_budgets={"mock": BudgetLimits(rpm=180)}
    )
    started = trio.current_time()
    daemons = [Daemon(repo, config) for _ in range(3)]
    for d in daemons:
        await nursery.start(d.run)
    view = await wait_status(repo, batch, BatchStatus.COMPLETED, timeout=60)
    took = trio.current_time() - started
    assert view.counts.completed == 30
    assert sum(mock_upstream.stats.rate_limited.values()) == 0
    assert mock_upstream.stats.total == 30
    assert took >= 9.0, took
    for d in daemons:
        d.stop()
