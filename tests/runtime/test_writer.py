"""The result writer against real PostgreSQL: what it does when a write fails.

A result the database refuses (a data error: no retry can fix it) is isolated to its own
request, recorded failed with reason ``unstorable``, and never holds up the others.
Transient failures are retried, and the daemon reads unhealthy (log, metric, readiness)
while they last.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any
from uuid import UUID, uuid4

import pytest
import trio
from helpers import OWNER, claim_by_model, daemon_config, make_batch, now, poll_until, wait_status
from prometheus_client import REGISTRY
from scripted_upstream import serve_scripted_upstream

from fusillade.core.attempts import AttemptResult, ClaimedRequest, ResultKind
from fusillade.core.models import BatchStatus, FailureReason, RequestState
from fusillade.errors import StoreUnavailable
from fusillade.runtime.daemon import Daemon
from fusillade.runtime.writer import ResultWriter
from fusillade.store.interface import DaemonInfo, RecordStats
from fusillade.store.postgres import PostgresRepository


async def _claimed(
    repo: PostgresRepository, n: int
) -> tuple[UUID, UUID, dict[UUID, ClaimedRequest]]:
    batch = await make_batch(repo, n)
    d = uuid4()

    def claim() -> dict[UUID, ClaimedRequest]:
        repo.register_daemon(DaemonInfo(d, "host", 1, "test"), now=now())
        return {c.id: c for c in claim_by_model(repo, d, {"m": n}, now=now())}

    return batch, d, await trio.to_thread.run_sync(claim)


async def test_a_result_the_database_refuses_is_failed_alone_and_the_rest_are_written(
    repo: PostgresRepository, nursery: trio.Nursery
) -> None:
    # Bodies that skipped the daemon's checks (core/bodies.py): whatever the database
    # refuses, for whatever reason, must not stall the writer (the report: forever).
    batch, d, claimed = await _claimed(repo, 9)
    ids = list(claimed)
    poison = {ids[2]: "bad input \x00 here", ids[6]: "a lone \ud800 surrogate"}

    def result(rid: UUID) -> AttemptResult:
        body = poison.get(rid, '{"ok":true}')
        return claimed[rid].result(ResultKind.SUCCEEDED, now(), status=200, body=body)

    async def record(results: Sequence[AttemptResult]) -> RecordStats:
        return await trio.to_thread.run_sync(repo.record_results, d, results)

    writer = ResultWriter(record, flush_max=100, flush_interval=0.01)
    await nursery.start(writer.run)
    written: dict[UUID, bool] = {}

    async def submit(rid: UUID) -> None:
        written[rid] = await writer.submit(result(rid))

    with trio.fail_after(30):
        async with trio.open_nursery() as submitters:
            for rid in ids:
                submitters.start_soon(submit, rid)

    assert written == dict.fromkeys(ids, True)
    assert writer.unstorable == 2 and writer.failures_in_a_row == 0
    view = await wait_status(repo, batch)
    assert (view.counts.completed, view.counts.failed) == (7, 2)
    for rid in ids:
        summary = (await trio.to_thread.run_sync(repo.get_request, OWNER, rid)).summary
        if rid in poison:
            assert summary.state is RequestState.FAILED
            assert summary.failure_reason is FailureReason.UNSTORABLE
            assert summary.failure_message is not None
            assert summary.failure_message.startswith("the database refused this result")
        else:
            assert summary.state is RequestState.COMPLETED


class _Outage:
    """The repository, except that ``record_results`` fails (transiently) while ``down``."""

    def __init__(self, repo: PostgresRepository) -> None:
        self._repo = repo
        self.down = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._repo, name)

    def record_results(self, daemon_id: UUID, results: Sequence[AttemptResult]) -> RecordStats:
        if self.down:
            raise StoreUnavailable("database unavailable: the test cut it off")
        return self._repo.record_results(daemon_id, results)


def _failures_gauge() -> float:
    value = REGISTRY.get_sample_value("fusillade_writer_failures_in_a_row")
    assert value is not None
    return value


async def test_a_writer_failing_transiently_retries_and_reports_unhealthy_until_it_writes(
    repo: PostgresRepository, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    upstream = await nursery.start(serve_scripted_upstream, {})
    flaky = _Outage(repo)
    flaky.down = True
    batch = await make_batch(repo, 5)
    daemon = Daemon(flaky, daemon_config(upstream))  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="fusillade.writer"):
        await nursery.start(daemon.run)
        await poll_until(lambda: not daemon.healthy, timeout=30)
        assert _failures_gauge() >= daemon.config.unhealthy_after_failures
        assert any(
            r.levelno == logging.ERROR and "readiness false" in r.getMessage()
            for r in caplog.records
        )
        flaky.down = False
        view = await wait_status(repo, batch, BatchStatus.COMPLETED, timeout=30)
    assert view.counts.completed == 5
    assert upstream.hits == dict.fromkeys((f"c{i}" for i in range(5)), 1)  # never sent twice
    await poll_until(lambda: daemon.healthy, timeout=10)
    assert _failures_gauge() == 0
    daemon.stop()
