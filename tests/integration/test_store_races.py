"""Races between a batch's check and its write, played deterministically with two sessions.

A second connection holds the batch row's lock, so ``retry_batch`` has done its check (a
read without locks) and waits in its writing statement; the second session then commits a
cancel (or an expiry stamp) and lets go. The retry must see what landed, not undo it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest
from helpers import claim_by_model

from fusillade.core.attempts import ResultKind
from fusillade.core.models import BatchStatus, Failure, FailureReason, RequestTemplate
from fusillade.errors import Conflict
from fusillade.store.interface import BatchSpec, BatchView, DaemonInfo
from fusillade.store.postgres import PostgresRepository

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def repo(database_url: str) -> Iterator[PostgresRepository]:
    with PostgresRepository(database_url, max_size=4) as r:
        yield r


def _batch_with_a_failure(repo: PostgresRepository) -> UUID:
    """A running batch of three: one failed (so a retry has work), two still pending."""
    templates = [RequestTemplate(f"req-{i}", "m1", f'{{"model":"m1","i":{i}}}') for i in range(3)]
    f = repo.create_file("alice", "in.jsonl", templates, now=T0)
    spec = BatchSpec(f.id, "/v1/chat/completions", "24h", timedelta(hours=24))
    b = repo.create_batch("alice", spec, now=T0).record.id
    d = uuid4()
    repo.register_daemon(DaemonInfo(d, "host", 1, "test"), now=T0)
    (c,) = claim_by_model(repo, d, {"m1": 1}, now=T0)
    bad = Failure(FailureReason.HTTP_STATUS, "500", 500, "oops")
    repo.record_results(d, [c.result(ResultKind.FAILED, T0, 500, "oops", bad)])
    return b


def _wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)  # the polling interval of a bounded wait, not a wait by itself


def _retry_while_another_session_writes(
    repo: PostgresRepository,
    database_url: str,
    batch: UUID,
    write: Callable[[psycopg.Connection[Any]], None],
    *,
    now: Any = T0,
) -> BatchView | Exception:
    """Run ``retry_batch`` until it waits on the batch row, commit ``write`` in another
    session meanwhile, and return what the retry answered."""
    answer: list[BatchView | Exception] = []

    def retry() -> None:
        try:
            answer.append(repo.retry_batch("alice", batch, now=now))
        except Exception as exc:  # handed to the test thread
            answer.append(exc)

    with (
        psycopg.connect(database_url) as other,
        psycopg.connect(database_url, autocommit=True) as probe,
    ):
        other.execute("SELECT id FROM batches WHERE id = %s FOR UPDATE", [batch])
        worker = threading.Thread(target=retry)
        worker.start()

        def retry_is_waiting() -> bool:
            row = probe.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE wait_event_type = 'Lock' AND query LIKE '%%retry_batch%%'"
            ).fetchone()
            return row is not None and row[0] == 1

        _wait_until(retry_is_waiting)  # the check is done; the write waits on the row
        write(other)
        other.commit()
        worker.join(timeout=30)
    assert not worker.is_alive()
    return answer[0]


def test_retry_does_not_undo_a_cancel_that_landed_after_its_check(
    repo: PostgresRepository, database_url: str
) -> None:
    b = _batch_with_a_failure(repo)

    def cancel(conn: psycopg.Connection[Any]) -> None:
        hit = conn.execute(repo.q.cancel_batch, {"id": b, "owner": "alice", "now": T0})
        assert hit.fetchone() is not None

    answer = _retry_while_another_session_writes(repo, database_url, b, cancel)
    assert isinstance(answer, Conflict)
    assert "cancelling" in str(answer)
    view = repo.get_batch("alice", b, now=T0)
    assert view.status is BatchStatus.CANCELLING  # the cancel the user was told about stands
    assert view.record.cancelling_at == T0
    assert view.counts.failed == 1  # and the retry did nothing


def test_retry_does_not_undo_an_expiry_stamped_after_its_check(
    repo: PostgresRepository, database_url: str
) -> None:
    b = _batch_with_a_failure(repo)
    before = T0 + timedelta(hours=24) - timedelta(seconds=1)  # the retry's check: in time
    after = T0 + timedelta(hours=24, seconds=1)  # the daemon's sweep: past the deadline

    def expire(conn: psycopg.Connection[Any]) -> None:
        assert conn.execute(repo.q.expire_batches, {"now": after}).fetchall()

    answer = _retry_while_another_session_writes(repo, database_url, b, expire, now=before)
    assert isinstance(answer, Conflict)
    assert "expiring" in str(answer)
    view = repo.get_batch("alice", b, now=after)
    assert view.record.expired_at == T0 + timedelta(hours=24)
    assert view.record.expires_at == T0 + timedelta(hours=24)  # no fresh window
    assert view.counts.failed == 1
    # once the expiry is applied (swept, frozen), a retry may run again
    repo.sweep(now=after)
    assert repo.get_batch("alice", b, now=after).status is BatchStatus.EXPIRED
    again = repo.retry_batch("alice", b, now=after, include_cancelled=True)
    assert again.status is BatchStatus.IN_PROGRESS


def test_retry_still_runs_when_nothing_landed_in_between(
    repo: PostgresRepository, database_url: str
) -> None:
    b = _batch_with_a_failure(repo)
    answer = _retry_while_another_session_writes(repo, database_url, b, lambda conn: None)
    assert isinstance(answer, BatchView)
    assert answer.counts.pending == 3
