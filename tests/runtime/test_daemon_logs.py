"""What daemons log: each batch transition once however many daemons run, and a burst
of 429s as a bounded number of lines (docs/logging.md)."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
import trio
from helpers import OWNER, daemon_config, make_batch, now, poll_until

from fusillade.core.ids import format_id
from fusillade.core.retry import RetryPolicy
from fusillade.mock_upstream import Behaviour, MockUpstream
from fusillade.runtime.daemon import Daemon
from fusillade.store.postgres import PostgresRepository


def events(caplog: pytest.LogCaptureFixture, event: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == event]


async def test_two_daemons_log_each_transition_once(
    repo: PostgresRepository,
    mock_upstream: MockUpstream,
    nursery: trio.Nursery,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="fusillade")
    done = await make_batch(repo, 12)
    other = await make_batch(repo, 4)
    held = await make_batch(repo, 6)
    # cancelled before any daemon runs: the cancel sweeps all its requests, and the
    # read that answers it freezes it
    await trio.to_thread.run_sync(lambda: repo.cancel_batch(OWNER, held, now=now()))
    daemons = [Daemon(repo, daemon_config(mock_upstream, maintenance_interval=0.2))]
    daemons.append(Daemon(repo, daemon_config(mock_upstream, maintenance_interval=0.2)))
    for daemon in daemons:
        await nursery.start(daemon.run)

    # nobody reads the batches: the daemons' maintenance freezes them
    def finished() -> dict[str, logging.LogRecord]:
        return {r.batch_id: r for r in events(caplog, "batch_finished")}

    await poll_until(lambda: finished(), lambda f: len(f) == 3, timeout=30)
    await trio.sleep(1)  # maintenance rounds of both daemons, to catch a second line
    ids = {b: format_id("batch", b) for b in (done, other, held)}
    assert sorted(r.batch_id for r in events(caplog, "batch_finished")) == sorted(ids.values())
    first = finished()[ids[done]]
    assert (first.status, first.completed) == ("completed", 12)
    assert first.owner == OWNER and first.duration_seconds >= 0
    assert finished()[ids[held]].status == "cancelled"
    assert [r.batch_id for r in events(caplog, "batch_created")] == list(ids.values())
    assert [r.batch_id for r in events(caplog, "batch_cancel_requested")] == [ids[held]]
    for daemon in daemons:
        daemon.stop()


async def test_expiry_is_logged_once_then_the_batch_finishes_expired(
    repo: PostgresRepository,
    mock_upstream: MockUpstream,
    nursery: trio.Nursery,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="fusillade")
    mock_upstream.config.default = Behaviour(hold=True)
    batch = await make_batch(repo, 3, window=timedelta(seconds=1))
    config = daemon_config(mock_upstream, maintenance_interval=0.2, default_concurrency=1)
    daemons = [Daemon(repo, config), Daemon(repo, config)]
    for daemon in daemons:
        await nursery.start(daemon.run)
    await poll_until(
        lambda: events(caplog, "batch_finished"), lambda found: len(found) == 1, timeout=30
    )
    await trio.sleep(0.5)
    public = format_id("batch", batch)
    assert [r.batch_id for r in events(caplog, "batch_expired")] == [public]
    (finished,) = events(caplog, "batch_finished")
    assert finished.status == "expired"
    assert finished.cancelled == 3
    assert finished.getMessage().startswith(f"batch {public} expired: 0 completed, 0 failed, 3")
    for daemon in daemons:
        daemon.stop()


async def test_a_burst_of_429s_is_a_bounded_number_of_lines(
    repo: PostgresRepository,
    mock_upstream: MockUpstream,
    nursery: trio.Nursery,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="fusillade.upstream")
    # every request refused 3 times: 40 429s at once, then more as the retries go (the
    # budget slows them down: without headers, 429s drive its rate estimate)
    mock_upstream.config.default = Behaviour(rate_limit_attempts=3)
    await make_batch(repo, 40)
    fast = RetryPolicy(base=timedelta(milliseconds=5), cap=timedelta(milliseconds=10))
    config = daemon_config(mock_upstream, retry=fast, trouble_interval=0.5, default_concurrency=40)
    daemon = Daemon(repo, config)
    started = trio.current_time()
    await nursery.start(daemon.run)

    def lines() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name == "fusillade.upstream"]

    await mock_upstream.wait_until(lambda s: s.faults["rate_limit"] >= 60)
    elapsed = trio.current_time() - started
    found = lines()
    refused = mock_upstream.stats.faults["rate_limit"]
    # per episode: started, at most one per interval, cleared after a quiet interval
    assert 1 <= len(found) <= 2 * (1 + elapsed / 0.5), [r.getMessage() for r in found]
    assert len(found) <= refused / 4
    assert found[0].levelno == logging.WARNING
    assert found[0].getMessage().startswith("upstream mock (127.0.0.1): trouble started: ")
    assert sum(r.counts.get("rate_limited", 0) for r in found) <= refused
    daemon.stop()
