"""The daemon end to end: real PostgreSQL, real HTTP to the in-process mock upstream."""

from __future__ import annotations

import json

import trio
from helpers import (
    daemon_config,
    make_batch,
    now,
    poll_until,
    result_lines,
    view_of,
    wait_status,
)

from fusillade.core.models import BatchStatus
from fusillade.core.strictjson import dumps_compact
from fusillade.mock_upstream import Behaviour, MockUpstream
from fusillade.runtime.daemon import Daemon
from fusillade.store.postgres import PostgresRepository


async def test_batch_over_two_models_completes_within_limits(
    repo: PostgresRepository, mock_upstream: MockUpstream, nursery: trio.Nursery
) -> None:
    mock_upstream.config.default = Behaviour(latency=0.01)
    batch = await make_batch(repo, ["m1", "m2"] * 1000)
    config = daemon_config(mock_upstream, model_concurrency={"m1": 8, "m2": 3})
    daemon = Daemon(repo, config)
    await nursery.start(daemon.run)
    view = await wait_status(repo, batch, BatchStatus.COMPLETED, timeout=120)
    assert view.counts.completed == 2000
    assert mock_upstream.stats.total == 2000
    assert max(mock_upstream.stats.by_request_id.values()) == 1
    assert mock_upstream.stats.peak_in_flight["m1"] <= 8
    assert mock_upstream.stats.peak_in_flight["m2"] <= 3
    lines = await result_lines(repo, batch)
    assert sorted(line.custom_id for line in lines) == sorted(f"c{i}" for i in range(2000))
    # JSON bodies are stored compact and marked, so downloads splice them unparsed.
    assert all(line.body_is_json for line in lines)
    assert all(line.body == dumps_compact(json.loads(line.body or "")) for line in lines)
    assert daemon.statistics().batches_in_flight == 0
    headers = mock_upstream.stats.last_headers
    assert headers["idempotency-key"] == headers["x-fusillade-request-id"]
    assert headers["x-fusillade-batch-id"] == str(batch)
    daemon.stop()


async def test_per_batch_state_is_evicted(
    repo: PostgresRepository, mock_upstream: MockUpstream, nursery: trio.Nursery
) -> None:
    """A long-running daemon keeps nothing for batches with nothing in flight."""
    daemon = Daemon(repo, daemon_config(mock_upstream))
    await nursery.start(daemon.run)
    for _ in range(5):
        batch = await make_batch(repo, 3)
        await wait_status(repo, batch, BatchStatus.COMPLETED)
    stats = daemon.statistics()
    assert stats.batches_in_flight == 0
    assert stats.in_flight == 0
    assert all(m.in_flight == 0 for m in stats.models)
    daemon.stop()


async def test_permanent_400_and_retried_500(
    repo: PostgresRepository, mock_upstream: MockUpstream, nursery: trio.Nursery
) -> None:
    mock_upstream.config.per_model["bad"] = Behaviour(status=400)
    batch = await make_batch(repo, ["bad", "fine"] * 2)
    daemon = Daemon(repo, daemon_config(mock_upstream))
    await nursery.start(daemon.run)
    view = await wait_status(repo, batch, BatchStatus.COMPLETED)
    assert (view.counts.completed, view.counts.failed) == (2, 2)
    assert mock_upstream.stats.by_model["bad"] == 2  # permanent: sent once each
    errors = await result_lines(repo, batch, errors=True)
    assert {e.status for e in errors} == {400}
    daemon.stop()


async def test_cancel_aborts_in_flight_within_a_second(
    repo: PostgresRepository, mock_upstream: MockUpstream, nursery: trio.Nursery
) -> None:
    mock_upstream.config.default = Behaviour(latency=30)
    mock_upstream.config.per_model["quick"] = Behaviour()
    batch = await make_batch(repo, ["quick"] * 2 + ["m"] * 20)
    daemon = Daemon(repo, daemon_config(mock_upstream, default_concurrency=5))
    await nursery.start(daemon.run)
    with trio.fail_after(10):
        await mock_upstream.wait_until(
            lambda s: s.in_flight_total >= 5 and s.by_status.get(200, 0) >= 2
        )
    await wait_status(repo, batch, BatchStatus.IN_PROGRESS)
    await poll_until(lambda: view_of(repo, batch), lambda v: v.counts.completed >= 2, timeout=10)
    await trio.to_thread.run_sync(lambda: repo.cancel_batch("alice", batch, now=now()))
    start = trio.current_time()
    view = await wait_status(repo, batch, BatchStatus.CANCELLED, timeout=5)
    assert trio.current_time() - start < 1.5
    assert (view.counts.completed, view.counts.canceled) == (2, 20)
    # completed results stay readable
    assert sorted(line.custom_id for line in await result_lines(repo, batch)) == ["c0", "c1"]
    daemon.stop()


async def test_graceful_shutdown_releases_at_once(
    repo: PostgresRepository, mock_upstream: MockUpstream, nursery: trio.Nursery
) -> None:
    mock_upstream.config.default = Behaviour(latency=30)
    batch = await make_batch(repo, 6)
    first = Daemon(repo, daemon_config(mock_upstream, default_concurrency=3, shutdown_grace=0.1))
    done = trio.Event()

    async def run_first() -> None:
        await first.run()
        done.set()

    nursery.start_soon(run_first)
    with trio.fail_after(10):
        await mock_upstream.wait_until(lambda s: s.in_flight_total >= 3)
    first.stop()
    with trio.fail_after(5):
        await done.wait()
    view = await view_of(repo, batch)
    assert view.counts.in_progress == 0
    assert view.counts.pending == 6
    mock_upstream.config.default = Behaviour()
    # stale_after of an hour: only an immediate release lets this daemon finish the batch
    second = Daemon(repo, daemon_config(mock_upstream, stale_after=3600))
    await nursery.start(second.run)
    await wait_status(repo, batch, BatchStatus.COMPLETED, timeout=10)
    second.stop()
