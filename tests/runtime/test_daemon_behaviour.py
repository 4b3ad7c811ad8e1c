"""Daemon behaviour beyond the happy path: wake-up, limits, expiry, metrics."""

from __future__ import annotations

from datetime import timedelta

import trio
import trio.testing
from helpers import daemon_config, make_batch, result_lines, wait_status
from prometheus_client import REGISTRY

from fusillade.core.models import BatchStatus
from fusillade.mock_upstream import Behaviour, MockUpstream
from fusillade.runtime.config import DaemonConfig
from fusillade.runtime.daemon import Daemon
from fusillade.store.postgres import PostgresRepository


def config(server: MockUpstream, **overrides: object) -> DaemonConfig:
    settings: dict[str, object] = {"maintenance_interval": 0.2, "poll_interval": 1.0}
    settings.update(overrides)
    return daemon_config(server, **settings)


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


async def test_limits_are_per_daemon_and_change_while_running(
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
    view = await wait_status(repo, batch, timeout=20)
    assert view.status is BatchStatus.EXPIRED
    assert view.counts.canceled == 10
    errors = await result_lines(repo, batch, errors=True)
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
    # "m" is labelled by name because the configuration names it (else: "other")
    daemon = Daemon(repo, config(mock_upstream, poll_interval=0.1, metric_models={"m"}))
    await nursery.start(daemon.run)
    await wait_status(repo, batch, BatchStatus.COMPLETED, timeout=20)
    assert metric("fusillade_requests_completed_total", model="m", status="200") == before + 7
    assert metric("fusillade_requests_claimed_total", model="m") == claimed_before + 7
    assert metric("fusillade_requests_in_flight", model="m") == 0
    daemon.stop()
