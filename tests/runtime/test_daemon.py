"""The daemon end to end: real PostgreSQL, real HTTP to the in-process mock upstream."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from uuid import UUID

import pytest
import trio
from upstream import mock_upstream_fixture  # noqa: F401 (registers ``mock_upstream``)

from fusillade.core.models import BatchStatus, RequestTemplate
from fusillade.core.retry import RetryPolicy
from fusillade.mock_upstream import Behaviour, MockUpstream
from fusillade.runtime.config import DaemonConfig, Upstream
from fusillade.runtime.daemon import Daemon
from fusillade.store.interface import BatchSpec
from fusillade.store.postgres import PostgresRepository


def now() -> datetime:
    return datetime.now(UTC)


@pytest.fixture
async def repo(database_url: str) -> AsyncIterator[PostgresRepository]:
    r = PostgresRepository(database_url, max_size=10)
    await trio.to_thread.run_sync(r.open)
    yield r
    await trio.to_thread.run_sync(r.close)


def config_for(server: MockUpstream, **kw: object) -> DaemonConfig:
    base: dict[str, object] = {
        "upstreams": {"mock": Upstream(server.url, api_key_env="MOCK_KEY")},
        "default_upstream": "mock",
        "poll_interval": 0.2,
        "heartbeat_interval": 0.5,
        "maintenance_interval": 0.5,
        "cancel_check_interval": 0.1,
        "retry": RetryPolicy(base=timedelta(milliseconds=20), cap=timedelta(milliseconds=200)),
    }
    base.update(kw)
    return DaemonConfig(**base)  # type: ignore[arg-type]


async def make_batch(
    repo: PostgresRepository, n: int, models: tuple[str, ...] = ("m1",), window: str = "24h"
) -> UUID:
    def go() -> UUID:
        def body(i: int) -> str:
            model = models[i % len(models)]
            return json.dumps(
                {"model": model, "messages": [{"role": "user", "content": f"hi {i}"}]}
            )

        ts = (
            RequestTemplate(custom_id=f"c{i}", model=models[i % len(models)], body=body(i))
            for i in range(n)
        )
        f = repo.create_file("alice", "in", ts, now=now())
        hours = {"24h": 24, "1h": 1}[window]
        spec = BatchSpec(f.id, "/v1/chat/completions", window, timedelta(hours=hours))
        return repo.create_batch("alice", spec, now=now()).record.id

    return await trio.to_thread.run_sync(go)


async def wait_status(
    repo: PostgresRepository, batch: UUID, *statuses: BatchStatus, timeout: float = 30
) -> object:
    with trio.fail_after(timeout):
        while True:
            view = await trio.to_thread.run_sync(lambda: repo.get_batch("alice", batch, now=now()))
            if view.status in statuses:
                return view
            await trio.sleep(0.05)


async def test_batch_over_two_models_completes_within_limits(
    repo: PostgresRepository, mock_upstream: MockUpstream, nursery: trio.Nursery
) -> None:
    mock_upstream.config.default = Behaviour(latency=0.01)
    batch = await make_batch(repo, 2000, ("m1", "m2"))
    daemon = Daemon(repo, config_for(mock_upstream, model_concurrency={"m1": 8, "m2": 3}))
    await nursery.start(daemon.run)
    view = await wait_status(repo, batch, BatchStatus.COMPLETED, timeout=120)
    assert view.counts.completed == 2000  # type: ignore[attr-defined]
    assert mock_upstream.stats.total == 2000
    assert max(mock_upstream.stats.by_request_id.values()) == 1
    assert mock_upstream.stats.peak_in_flight["m1"] <= 8
    assert mock_upstream.stats.peak_in_flight["m2"] <= 3
    lines = await trio.to_thread.run_sync(
        lambda: list(repo.iter_results("alice", batch, errors=False))
    )
    assert sorted(line.custom_id for line in lines) == sorted(f"c{i}" for i in range(2000))
    assert daemon.statistics().batches_in_flight == 0  # lesson 8: nothing kept per batch
    headers = mock_upstream.stats.last_headers
    assert headers["idempotency-key"] == headers["x-fusillade-request-id"]
    daemon.stop()


async def test_permanent_400_and_retried_500(
    repo: PostgresRepository, mock_upstream: MockUpstream, nursery: trio.Nursery
) -> None:
    mock_upstream.config.per_model["bad"] = Behaviour(status=400)
    mock_upstream.config.per_model["flaky"] = Behaviour(rate_limit_attempts=0, error_rate=0.0)
    batch = await make_batch(repo, 4, ("bad", "flaky"))
    daemon = Daemon(repo, config_for(mock_upstream))
    await nursery.start(daemon.run)
    view = await wait_status(repo, batch, BatchStatus.COMPLETED)
    assert (view.counts.completed, view.counts.failed) == (2, 2)  # type: ignore[attr-defined]
    assert mock_upstream.stats.by_model["bad"] == 2  # permanent: sent once each
    errors = await trio.to_thread.run_sync(
        lambda: list(repo.iter_results("alice", batch, errors=True))
    )
    assert {e.status for e in errors} == {400}
    daemon.stop()


async def test_cancel_aborts_in_flight_within_a_second(
    repo: PostgresRepository, mock_upstream: MockUpstream, nursery: trio.Nursery
) -> None:
    mock_upstream.config.default = Behaviour(latency=30)
    batch = await make_batch(repo, 20)
    daemon = Daemon(repo, config_for(mock_upstream, default_concurrency=5))
    await nursery.start(daemon.run)
    with trio.fail_after(10):
        while mock_upstream.stats.in_flight_total < 5:
            await trio.sleep(0.02)
    await trio.to_thread.run_sync(lambda: repo.cancel_batch("alice", batch, now=now()))
    start = trio.current_time()
    view = await wait_status(repo, batch, BatchStatus.CANCELLED, timeout=5)
    assert trio.current_time() - start < 1.5
    assert view.counts.canceled == 20  # type: ignore[attr-defined]
    daemon.stop()


async def test_graceful_shutdown_releases_at_once(
    repo: PostgresRepository, mock_upstream: MockUpstream, nursery: trio.Nursery
) -> None:
    mock_upstream.config.default = Behaviour(latency=30)
    batch = await make_batch(repo, 6)
    first = Daemon(repo, config_for(mock_upstream, default_concurrency=3, shutdown_grace=0.1))
    done = trio.Event()

    async def run_first() -> None:
        await first.run()
        done.set()

    nursery.start_soon(run_first)
    with trio.fail_after(10):
        while mock_upstream.stats.in_flight_total < 3:
            await trio.sleep(0.02)
    first.stop()
    with trio.fail_after(5):
        await done.wait()
    view = await trio.to_thread.run_sync(lambda: repo.get_batch("alice", batch, now=now()))
    assert view.counts.in_progress == 0 and view.counts.pending == 6
    mock_upstream.config.default = Behaviour()
    second = Daemon(repo, config_for(mock_upstream, stale_after=3600))
    await nursery.start(second.run)
    await wait_status(repo, batch, BatchStatus.COMPLETED, timeout=10)
    second.stop()
