"""Retries against real HTTP faults: 429 with retry-after, 5xx, timeouts, resets, death."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from uuid import UUID

import pytest
import trio
from upstream import mock_upstream_fixture  # noqa: F401 (registers ``mock_upstream``)

from fusillade.core.models import BatchView, RequestTemplate
from fusillade.core.retry import RetryPolicy
from fusillade.mock_upstream import Behaviour, MockUpstream
from fusillade.runtime.config import DaemonConfig, Upstream
from fusillade.runtime.daemon import Daemon
from fusillade.store.interface import BatchSpec, ResultLine
from fusillade.store.postgres import PostgresRepository


def body(model: str) -> str:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]})


def now() -> datetime:
    return datetime.now(UTC)


@pytest.fixture
async def repo(database_url: str) -> AsyncIterator[PostgresRepository]:
    r = PostgresRepository(database_url, max_size=10)
    await trio.to_thread.run_sync(r.open)
    yield r
    await trio.to_thread.run_sync(r.close)


def config(server: MockUpstream, **kw: object) -> DaemonConfig:
    base: dict[str, object] = {
        "upstreams": {"mock": Upstream(server.url)},
        "default_upstream": "mock",
        "poll_interval": 0.2,
        "heartbeat_interval": 0.5,
        "maintenance_interval": 0.3,
        "cancel_check_interval": 0.1,
        "retry": RetryPolicy(base=timedelta(milliseconds=50), cap=timedelta(milliseconds=200)),
    }
    base.update(kw)
    return DaemonConfig(**base)  # type: ignore[arg-type]


async def batch_of(
    repo: PostgresRepository, models: list[str], window: timedelta = timedelta(hours=24)
) -> UUID:
    def go() -> UUID:
        ts = [
            RequestTemplate(custom_id=f"c{i}", model=m, body=body(m)) for i, m in enumerate(models)
        ]
        f = repo.create_file("alice", "in", ts, now=now())
        label = f"{int(window.total_seconds())}s"
        spec = BatchSpec(f.id, "/v1/chat/completions", label, window)
        return repo.create_batch("alice", spec, now=now()).record.id

    return await trio.to_thread.run_sync(go)


async def finished(repo: PostgresRepository, batch: UUID, timeout: float = 30) -> BatchView:
    with trio.fail_after(timeout):
        while True:
            view = await trio.to_thread.run_sync(lambda: repo.get_batch("alice", batch, now=now()))
            if view.status.is_terminal:
                return view
            await trio.sleep(0.05)


async def lines(repo: PostgresRepository, batch: UUID, *, errors: bool) -> list[ResultLine]:
    return await trio.to_thread.run_sync(
        lambda: list(repo.iter_results("alice", batch, errors=errors))
    )


async def test_429_retry_after_is_honoured_and_pauses_the_model(
    repo: PostgresRepository, mock_upstream: MockUpstream, nursery: trio.Nursery
) -> None:
    # Every request is refused once with retry-after: 1 s, then answered.
    mock_upstream.config.default = Behaviour(rate_limit_attempts=1, retry_after=1.0)
    batch = await batch_of(repo, ["m"] * 4)
    daemon = Daemon(repo, config(mock_upstream, default_concurrency=4))
    started = trio.current_time()
    await nursery.start(daemon.run)
    view = await finished(repo, batch)
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
    batch = await batch_of(repo, ["m"] * 30)
    daemon = Daemon(
        repo,
        config(
            mock_upstream,
            retry=RetryPolicy(
                max_attempts=20, base=timedelta(milliseconds=10), cap=timedelta(milliseconds=50)
            ),
        ),
    )
    await nursery.start(daemon.run)
    view = await finished(repo, batch)
    assert view.counts.completed == 30
    assert mock_upstream.stats.faults["error"] > 0
    assert mock_upstream.stats.total == 30 + mock_upstream.stats.faults["error"]


async def test_timeouts_and_resets_are_retried(
    repo: PostgresRepository, mock_upstream: MockUpstream, nursery: trio.Nursery
) -> None:
    mock_upstream.config.per_model["slow"] = Behaviour(timeout_rate=0.5)
    mock_upstream.config.per_model["reset"] = Behaviour(reset_rate=0.5)
    batch = await batch_of(repo, ["slow"] * 8 + ["reset"] * 8)
    policy = RetryPolicy(
        max_attempts=30, base=timedelta(milliseconds=10), cap=timedelta(milliseconds=30)
    )
    daemon = Daemon(repo, config(mock_upstream, request_timeout=0.3, retry=policy))
    await nursery.start(daemon.run)
    view = await finished(repo, batch)
    assert view.counts.completed == 16
    assert mock_upstream.stats.faults["timeout"] > 0
    assert mock_upstream.stats.faults["reset"] > 0


async def test_permanent_failure_keeps_status_and_body(
    repo: PostgresRepository, mock_upstream: MockUpstream, nursery: trio.Nursery
) -> None:
    mock_upstream.config.default = Behaviour(status=400)
    batch = await batch_of(repo, ["m"])
    daemon = Daemon(repo, config(mock_upstream))
    await nursery.start(daemon.run)
    view = await finished(repo, batch)
    assert view.counts.failed == 1
    assert view.record.output_file_id is not None and not view.has_output
    (line,) = await lines(repo, batch, errors=True)
    assert line.status == 400
    assert line.body is not None and "error" in line.body
    assert mock_upstream.stats.total == 1


async def test_dead_upstream_fails_by_the_deadline_without_a_hot_loop(
    repo: PostgresRepository, mock_upstream: MockUpstream, nursery: trio.Nursery
) -> None:
    mock_upstream.config.default = Behaviour(status=503)
    batch = await batch_of(repo, ["m"] * 3, window=timedelta(seconds=3))
    policy = RetryPolicy(
        max_attempts=1000, base=timedelta(milliseconds=100), cap=timedelta(milliseconds=400)
    )
    daemon = Daemon(repo, config(mock_upstream, retry=policy))
    await nursery.start(daemon.run)
    view = await finished(repo, batch, timeout=20)
    assert view.counts.failed + view.counts.canceled == 3
    assert view.counts.completed == 0
    # ~3 s at a backoff of up to 400 ms: a few dozen attempts, never thousands.
    assert mock_upstream.stats.total < 3 * 40
    daemon.stop()
