"""Retries against real HTTP faults: 429 with retry-after, 5xx, timeouts, resets, death."""

from __future__ import annotations

from datetime import timedelta

import trio
from helpers import daemon_config as config
from helpers import make_batch, result_lines, wait_status

from fusillade.core.retry import RetryPolicy
from fusillade.mock_upstream import Behaviour, MockUpstream
from fusillade.runtime.daemon import Daemon
from fusillade.store.postgres import PostgresRepository


async def test_429_retry_after_is_honoured_and_pauses_the_model(
    repo: PostgresRepository, mock_upstream: MockUpstream, nursery: trio.Nursery
) -> None:
    # Every request is refused once with retry-after: 1 s, then answered.
    mock_upstream.config.default = Behaviour(rate_limit_attempts=1, retry_after=1.0)
    batch = await make_batch(repo, 4)
    daemon = Daemon(repo, config(mock_upstream, default_concurrency=4))
    started = trio.current_time()
    await nursery.start(daemon.run)
    view = await wait_status(repo, batch)
    assert view.counts.completed == 4
    # Nothing could go again before the retry-after passed...
    assert trio.current_time() - started >= 1.0
    # ...each request was sent exactly twice: no hammering while paused.
    assert sorted(mock_upstream.stats.by_request_id.values()) == [2, 2, 2, 2]
    assert mock_upstream.stats.faults["rate_limit"] == 4
    daemon.stop()


async def test_500s_are_retried_with_backoff(
    repo: PostgresRepository, mock_upstream: MockUpstream, nursery: trio.Nursery
) -> None:
    mock_upstream.config.default = Behaviour(error_rate=0.5)
    batch = await make_batch(repo, 30)
    policy = RetryPolicy(
        max_attempts=20, base=timedelta(milliseconds=10), cap=timedelta(milliseconds=50)
    )
    daemon = Daemon(repo, config(mock_upstream, retry=policy))
    await nursery.start(daemon.run)
    view = await wait_status(repo, batch)
    assert view.counts.completed == 30
    assert mock_upstream.stats.faults["error"] > 0
    assert mock_upstream.stats.total == 30 + mock_upstream.stats.faults["error"]


async def test_timeouts_and_resets_are_retried(
    repo: PostgresRepository, mock_upstream: MockUpstream, nursery: trio.Nursery
) -> None:
    mock_upstream.config.per_model["slow"] = Behaviour(timeout_rate=0.5)
    mock_upstream.config.per_model["reset"] = Behaviour(reset_rate=0.5)
    batch = await make_batch(repo, ["slow"] * 8 + ["reset"] * 8)
    policy = RetryPolicy(
        max_attempts=30, base=timedelta(milliseconds=10), cap=timedelta(milliseconds=30)
    )
    daemon = Daemon(repo, config(mock_upstream, request_timeout=0.3, retry=policy))
    await nursery.start(daemon.run)
    view = await wait_status(repo, batch)
    assert view.counts.completed == 16
    assert mock_upstream.stats.faults["timeout"] > 0
    assert mock_upstream.stats.faults["reset"] > 0


async def test_permanent_failure_keeps_status_and_body(
    repo: PostgresRepository, mock_upstream: MockUpstream, nursery: trio.Nursery
) -> None:
    mock_upstream.config.default = Behaviour(status=400)
    batch = await make_batch(repo, 1)
    daemon = Daemon(repo, config(mock_upstream))
    await nursery.start(daemon.run)
    view = await wait_status(repo, batch)
    assert view.counts.failed == 1
    assert not view.has_output  # output_file_id is null when every line failed
    (line,) = await result_lines(repo, batch, errors=True)
    assert line.status == 400
    assert line.body is not None
    assert "error" in line.body
    assert mock_upstream.stats.total == 1


async def test_dead_upstream_fails_by_the_deadline_without_a_hot_loop(
    repo: PostgresRepository, mock_upstream: MockUpstream, nursery: trio.Nursery
) -> None:
    mock_upstream.config.default = Behaviour(status=503)
    batch = await make_batch(repo, 3, window=timedelta(seconds=3))
    policy = RetryPolicy(
        max_attempts=1000, base=timedelta(milliseconds=100), cap=timedelta(milliseconds=400)
    )
    daemon = Daemon(repo, config(mock_upstream, retry=policy))
    await nursery.start(daemon.run)
    view = await wait_status(repo, batch, timeout=20)
    assert view.counts.failed + view.counts.canceled == 3
    assert view.counts.completed == 0
    # ~3 s at a backoff of up to 400 ms: a few dozen attempts, never thousands.
    assert mock_upstream.stats.total < 3 * 40
    daemon.stop()
