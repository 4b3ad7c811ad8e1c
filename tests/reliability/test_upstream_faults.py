"""Upstream faults beyond tests/runtime/test_retries.py (which covers 429 with retry-after,
500s, read timeouts, resets, a permanent 400 and a dead upstream until the deadline).

Here: slow bodies (within and beyond the request time limit), 200 answers whose body is
not JSON, a burst of 503s with ``retry-after``, and an upstream that refuses connections
for a while then comes back. Each checks the final states, the error lines (their
format: docs/api.md, file content) and how often the upstream was hit (no hot loop).
"""

from __future__ import annotations

import json
import socket
from datetime import timedelta
from types import SimpleNamespace
from typing import Any
from uuid import UUID

import trio
from faultkit import rows
from helpers import daemon_config, make_batch, poll_until, result_lines, wait_status

from fusillade.core.models import BatchStatus
from fusillade.core.results import format_result_line
from fusillade.core.retry import RetryPolicy
from fusillade.mock_upstream import Behaviour, MockConfig, MockUpstream, serve_mock_upstream
from fusillade.runtime.daemon import Daemon
from fusillade.store.postgres import PostgresRepository


def policy(attempts: int, base_ms: int = 20, cap_ms: int = 100) -> RetryPolicy:
    return RetryPolicy(
        max_attempts=attempts,
        base=timedelta(milliseconds=base_ms),
        cap=timedelta(milliseconds=cap_ms),
    )


async def error_lines(repo: PostgresRepository, batch: UUID) -> list[dict[str, Any]]:
    return [
        json.loads(format_result_line(line))
        for line in await result_lines(repo, batch, errors=True)
    ]


async def test_slow_bodies_complete_within_the_limit_and_time_out_beyond_it(
    repo: PostgresRepository, mock_upstream: MockUpstream, nursery: trio.Nursery
) -> None:
    mock_upstream.config.per_model["drip"] = Behaviour(slow_body=0.3)
    mock_upstream.config.per_model["stall"] = Behaviour(slow_body=5.0)
    batch = await make_batch(repo, ["drip"] * 4 + ["stall"] * 3)
    config = daemon_config(mock_upstream, request_timeout=1.0, retry=policy(3))
    daemon = Daemon(repo, config)
    await nursery.start(daemon.run)
    view = await wait_status(repo, batch, timeout=30)
    daemon.stop()

    assert view.status is BatchStatus.COMPLETED
    assert (view.counts.completed, view.counts.failed) == (4, 3)
    assert mock_upstream.stats.by_model["drip"] == 4  # a slow body is not a failure
    assert mock_upstream.stats.by_model["stall"] == 3 * 3  # each attempt timed out: 3 each
    for line in await error_lines(repo, batch):
        assert line["response"] is None
        assert line["error"]["code"] == "request_timeout"
    outputs = await result_lines(repo, batch)
    assert all(json.loads(line.body or "")["object"] == "chat.completion" for line in outputs)


async def test_a_200_with_a_body_that_is_not_json_is_retried_then_failed(
    repo: PostgresRepository, mock_upstream: MockUpstream, nursery: trio.Nursery
) -> None:
    mock_upstream.config.per_model["garbled"] = Behaviour(invalid_json_rate=1.0)
    mock_upstream.config.per_model["flaky"] = Behaviour(invalid_json_rate=0.5)
    batch = await make_batch(repo, ["garbled"] * 3 + ["flaky"] * 10)
    daemon = Daemon(repo, daemon_config(mock_upstream, retry=policy(4)))
    await nursery.start(daemon.run)
    view = await wait_status(repo, batch, timeout=30)
    daemon.stop()

    stats = mock_upstream.stats
    # Never recorded as a result: retried until the budget (4 attempts) is spent.
    assert stats.by_model["garbled"] == 3 * 4
    errors = await error_lines(repo, batch)
    garbled = [e for e in errors if e["custom_id"] in {"c0", "c1", "c2"}]
    assert len(garbled) == 3
    for line in garbled:
        assert line["response"] is None
        assert line["error"]["code"] == "connection_error"
        assert "non-JSON" in line["error"]["message"]
    # The flaky ones: every invalid answer was retried, each valid one recorded once.
    flaky_done = view.counts.completed
    flaky_failed = view.counts.failed - 3
    assert flaky_done + flaky_failed == 10
    assert stats.by_model["flaky"] == flaky_done + stats.faults["invalid_json"] - 3 * 4
    for line in await result_lines(repo, batch):
        json.loads(line.body or "")  # what was recorded is JSON


async def test_a_burst_of_503s_is_retried_after_retry_after_without_a_hot_loop(
    repo: PostgresRepository, mock_upstream: MockUpstream, nursery: trio.Nursery
) -> None:
    retry_after = 0.25
    mock_upstream.config.default = Behaviour(status=503, retry_after=retry_after)
    n = 10
    batch = await make_batch(repo, n)
    daemon = Daemon(repo, daemon_config(mock_upstream, retry=policy(100)))
    started = trio.current_time()
    await nursery.start(daemon.run)
    with trio.fail_after(30):
        await mock_upstream.wait_until(lambda s: s.by_status[503] >= 3 * n)
    mock_upstream.config.default = Behaviour()  # the upstream recovers
    burst = trio.current_time() - started
    view = await wait_status(repo, batch, timeout=30)
    daemon.stop()

    assert view.status is BatchStatus.COMPLETED and view.counts.completed == n
    seen = mock_upstream.stats.by_request_id
    # Each request waited retry-after between tries: at most one try per retry-after
    # during the burst, plus the one that succeeded.
    most = int(burst / retry_after) + 2
    assert min(seen.values()) >= 3 and max(seen.values()) <= most, (dict(seen), burst)
    assert mock_upstream.stats.by_status[200] == n
    assert await error_lines(repo, batch) == []
    print(f"503 burst {burst:.2f} s: tries per request {sorted(seen.values())}, at most {most}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def test_an_upstream_that_is_down_for_a_while_then_returns(
    repo: PostgresRepository, database_url: str, nursery: trio.Nursery
) -> None:
    port = free_port()  # nothing listens there yet: connections are refused
    n = 8
    batch = await make_batch(repo, n)
    down = SimpleNamespace(url=f"http://127.0.0.1:{port}")
    config = daemon_config(down, retry=policy(200, base_ms=50, cap_ms=200))
    daemon = Daemon(repo, config)
    await nursery.start(daemon.run)
    went_down = trio.current_time()

    async def attempts() -> list[int]:
        found = await rows(database_url, "SELECT attempts FROM requests WHERE batch_id = %s", batch)
        return [int(a) for (a,) in found]

    await poll_until(attempts, lambda a: min(a) >= 3)  # every request refused a few times
    # The scenario's length, not a wait for anything: the upstream stays down one more
    # second, so that the refusals counted below span real backoff time.
    await trio.sleep(1.0)
    refused = await attempts()
    down_for = trio.current_time() - went_down
    upstream: MockUpstream = await nursery.start(
        lambda task_status: serve_mock_upstream(MockConfig(), port=port, task_status=task_status)
    )
    view = await wait_status(repo, batch, timeout=30)
    daemon.stop()

    assert view.status is BatchStatus.COMPLETED and view.counts.completed == n
    assert await error_lines(repo, batch) == []
    assert sorted(upstream.stats.by_request_id.values()) == [1] * n  # once back: once each
    # No hot loop while it was down: backoff (up to 200 ms, full jitter) between tries.
    assert max(refused) <= 60, refused
    final = await attempts()
    assert all(f <= r + 2 for f, r in zip(sorted(final), sorted(refused), strict=True))
    print(f"upstream down {down_for:.2f} s: refused tries per request {sorted(refused)}")
