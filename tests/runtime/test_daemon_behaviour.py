"""Daemon behaviour beyond the happy path: wake-up, limits, expiry, metrics."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from uuid import UUID

import pytest
import trio
import trio.testing
from prometheus_client import REGISTRY
from upstream import mock_upstream_fixture  # noqa: F401 (registers ``mock_upstream``)

from fusillade.core.models import BatchStatus, BatchView, RequestTemplate
from fusillade.mock_upstream import Behaviour, MockUpstream
from fusillade.runtime.config import DaemonConfig, Upstream
from fusillade.runtime.daemon import Daemon
from fusillade.store.interface import BatchSpec
from fusillade.store.postgres import PostgresRepository


def now() -> datetime:
    return datetime.now(UTC)


@pytest.fixture
async def repo(database_url: str) -> AsyncIterator[PostgresRepository]:
    r = PostgresRepository(database_url)
    await trio.to_thread.run_sync(r.open)
    yield r
    await trio.to_thread.run_sync(r.close)


def config(server: MockUpstream, **kw: object) -> DaemonConfig:
    base: dict[str, object] = {
        "upstreams": {"mock": Upstream(server.url)},
        "default_upstream": "mock",
        "maintenance_interval": 0.2,
        "cancel_check_interval": 0.1,
    }
    base.update(kw)
    return DaemonConfig(**base)  # type: ignore[arg-type]


async def make_batch(
    repo: PostgresRepository, n: int, window: timedelta = timedelta(hours=24)
) -> UUID:
    def go() -> UUID:
        ts = [
            RequestTemplate(
                f"c{i}",
                "m",
                json.dumps({"model": "m", "messages": [{"role": "user", "content": "x"}]}),
            )
            for i in range(n)
        ]
        f = repo.create_file("alice", "in", ts, now=now())
        spec = BatchSpec(f.id, "/v1/chat/completions", f"{int(window.total_seconds())}s", window)
        return repo.create_batch("alice", spec, now=now()).record.id

    return await trio.to_thread.run_sync(go)


async def view_of(repo: PostgresRepository, batch: UUID) -> BatchView:
    return await trio.to_thread.run_sync(lambda: repo.get_batch("alice", batch, now=now()))


async def test_a_new_batch_starts_on_notify_not_on_the_poll(
    repo: PostgresRepository, mock_upstream: MockUpstream, nursery: trio.Nursery
) -> None:
    quiet = {"maintenance_interval": 60, "cancel_check_interval": 60, "heartbeat_interval": 60}
    daemon = Daemon(repo, config(mock_upstream, poll_interval=60, **quiet))
    await nursery.start(daemon.run)
    # until the daemon sits in its (minute-long) wait for work
    with trio.fail_after(10):
        await trio.testing.wait_all_tasks_blocked(cushion=0.2)
    started = trio.current_time()
    await make_batch(repo, 1)
    with trio.fail_after(5):
        await mock_upstream.wait_until(lambda s: s.total >= 1)
    assert trio.current_time() - started < 2  # far from the 60 s poll
    daemon.stop()


async def test_lesson5_limits_are_per_daemon_and_change_while_running(
    repo: PostgresRepository, mock_upstream: MockUpstream, nursery: trio.Nursery
) -> None:
    mock_upstream.config.default = Behaviour(hold=True)
    await make_batch(repo, 30)
    daemon = Daemon(repo, config(mock_upstream, default_concurrency=6, poll_interval=0.1))
    await nursery.start(daemon.run)
    with trio.fail_after(10):
        await mock_upstream.wait_until(lambda s: s.in_flight_total == 6)
    daemon.set_concurrency("m", 2)
    mock_upstream.config.default = Behaviour()
    mock_upstream.release_held()
    mock_upstream.stats.peak_in_flight.clear()
    with trio.fail_after(30):
        await mock_upstream.wait_until(lambda s: s.total == 30)
    assert mock_upstream.stats.peak_in_flight["m"] <= 2
    daemon.stop()


async def test_expiry_aborts_in_flight_and_cancels_the_rest(
    repo: PostgresRepository, mock_upstream: MockUpstream, nursery: trio.Nursery
) -> None:
    mock_upstream.config.default = Behaviour(latency=60)
    batch = await make_batch(repo, 10, window=timedelta(seconds=2))
    daemon = Daemon(repo, config(mock_upstream, default_concurrency=3, poll_interval=0.1))
    await nursery.start(daemon.run)
    with trio.fail_after(20):
        while not (view := await view_of(repo, batch)).status.is_terminal:
            await trio.sleep(0.05)
    assert view.status is BatchStatus.EXPIRED
    assert view.counts.canceled == 10
    errors = await trio.to_thread.run_sync(
        lambda: list(repo.iter_results("alice", batch, errors=True))
    )
    assert {e.failure_reason for e in errors} == {"expired"}
    assert mock_upstream.stats.total == 3  # nothing claimed after the deadline
    daemon.stop()


def metric(name: str, **labels: str) -> float:
    value = REGISTRY.get_sample_value(name, labels)
    return value or 0.0


async def test_metrics_count_what_happened(
    repo: PostgresRepository, mock_upstream: MockUpstream, nursery: trio.Nursery
) -> None:
    before = metric("fusillade_requests_completed_total", model="m", status="200")
    claimed_before = metric("fusillade_requests_claimed_total", model="m")
    batch = await make_batch(repo, 7)
    daemon = Daemon(repo, config(mock_upstream, poll_interval=0.1))
    await nursery.start(daemon.run)
    with trio.fail_after(20):
        while (await view_of(repo, batch)).status is not BatchStatus.COMPLETED:
            await trio.sleep(0.05)
    assert metric("fusillade_requests_completed_total", model="m", status="200") == before + 7
    assert metric("fusillade_requests_claimed_total", model="m") == claimed_before + 7
    assert metric("fusillade_requests_in_flight", model="m") == 0
    daemon.stop()
