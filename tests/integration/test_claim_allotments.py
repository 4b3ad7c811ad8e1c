"""The claim by (batch, model, n) allotments, the claimable batches and escalation, on
both stores (``MemoryRepository`` and ``PostgresRepository``) with the same expectations.

Every expected value is worked out from the batches each test creates.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import pytest

from fusillade.core.attempts import ClaimedRequest, ResultKind
from fusillade.core.batches import ClaimableBatch
from fusillade.core.models import Failure, FailureReason, RequestTemplate
from fusillade.store.interface import BatchSpec, DaemonInfo, Repository
from fusillade.store.memory import MemoryRepository
from fusillade.store.postgres import PostgresRepository

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture(params=["memory", "postgres"])
def repo(request: pytest.FixtureRequest) -> Iterator[Repository]:
    if request.param == "memory":
        yield MemoryRepository()
        return
    url: str = request.getfixturevalue("database_url")
    with PostgresRepository(url) as pg:
        yield pg


def batch(
    repo: Repository,
    n: int,
    *,
    models: tuple[str, ...] = ("m",),
    window: str = "24h",
    owner: str = "alice",
    now: datetime = T0,
) -> UUID:
    """``n`` requests ``r0``, ``r1``, ... with models taken in turn from ``models``."""
    lines = [RequestTemplate(f"r{i}", models[i % len(models)], "{}") for i in range(n)]
    f = repo.create_file(owner, "in.jsonl", lines, now=now)
    hours = {"24h": 24, "1h": 1, "2h": 2}[window]
    spec = BatchSpec(f.id, "/v1/chat/completions", window, timedelta(hours=hours))
    return repo.create_batch(owner, spec, now=now).record.id


def daemon(repo: Repository) -> UUID:
    d = uuid4()
    repo.register_daemon(DaemonInfo(d, "h", 1, "t"), now=T0)
    return d


def ids(claimed: list[ClaimedRequest], batch_id: UUID, model: str | None = None) -> list[str]:
    return sorted(
        (c.custom_id for c in claimed if c.batch_id == batch_id and model in (None, c.model)),
        key=lambda cid: int(cid[1:]),
    )


def test_at_most_n_per_pair_in_line_order(repo: Repository) -> None:
    a = batch(repo, 10, models=("x", "y"))  # x: r0 r2 r4 r6 r8; y: r1 r3 r5 r7 r9
    b = batch(repo, 3)
    d = daemon(repo)
    claimed = repo.claim(d, [(a, "x", 2), (a, "y", 3), (b, "m", 5), (a, "m", 4)], now=T0)
    assert ids(claimed, a, "x") == ["r0", "r2"]
    assert ids(claimed, a, "y") == ["r1", "r3", "r5"]
    assert ids(claimed, b) == ["r0", "r1", "r2"]  # only 3 there
    assert len(claimed) == 8  # none of model m in batch a
    assert all(c.daemon_id == d and c.attempt == 1 for c in claimed)
    # the next claim goes on from there; a pair named twice counts once, summed
    again = repo.claim(d, [(a, "x", 1), (a, "x", 1), (a, "y", 0)], now=T0)
    assert ids(again, a) == ["r4", "r6"]
    assert repo.claim(d, [], now=T0) == []
    assert repo.claim(d, [(uuid4(), "x", 5)], now=T0) == []


def test_never_from_a_cancelled_or_expired_batch(repo: Repository) -> None:
    live = batch(repo, 4)
    # cancel_batch turns 10,000 pending rows canceled at once; the rest wait for a sweep
    cancelled = batch(repo, 10_005)
    short = batch(repo, 4, window="1h")
    repo.cancel_batch("alice", cancelled, now=T0)
    d = daemon(repo)
    after_deadline = T0 + timedelta(hours=1)
    everything = [(b, "m", 2) for b in (live, cancelled, short)]
    assert {c.batch_id for c in repo.claim(d, everything, now=T0)} == {live, short}
    claimed = repo.claim(d, everything, now=after_deadline)
    assert {c.batch_id for c in claimed} == {live}
    # the expired batch is refused at its deadline even before a sweep stamps it
    assert [c.id for c in repo.claimable_batches(now=after_deadline)] == []


def test_retries_due_are_taken_and_those_backing_off_are_not(repo: Repository) -> None:
    b = batch(repo, 4)
    d = daemon(repo)
    first = repo.claim(d, [(b, "m", 2)], now=T0)  # r0, r1
    later = T0 + timedelta(seconds=30)
    r0, r1 = sorted(first, key=lambda c: c.custom_id)
    retry = r0.result(ResultKind.RETRY, T0, status=500, body="{}", not_before=later)
    repo.record_results(d, [retry, r1.result(ResultKind.SUCCEEDED, T0, 200, "{}")])
    assert ids(repo.claim(d, [(b, "m", 5)], now=T0), b) == ["r2", "r3"]  # r0 not due
    (again,) = repo.claim(d, [(b, "m", 5)], now=later)
    assert (again.custom_id, again.attempt) == ("r0", 2)


def test_claimable_batches(repo: Repository) -> None:
    late = batch(repo, 5, models=("x", "y"))  # 24 h
    soon = batch(repo, 3, window="2h")
    cancelled = batch(repo, 1)
    repo.cancel_batch("alice", cancelled, now=T0)
    drained = batch(repo, 1, window="1h")
    d = daemon(repo)
    # drained: its only request in flight, nothing pending: left out
    repo.claim(d, [(drained, "m", 1)], now=T0)
    claimed = repo.claim(d, [(late, "x", 2), (late, "y", 1)], now=T0)  # r0 r2 (x), r1 (y)
    by_id = {c.custom_id: c for c in claimed}
    repo.record_results(
        d,
        [
            by_id["r0"].result(ResultKind.SUCCEEDED, T0, 200, "{}"),
            by_id["r2"].result(
                ResultKind.FAILED, T0, failure=Failure(FailureReason.TIMEOUT, "read timeout")
            ),
        ],
    )
    got = repo.claimable_batches(now=T0)
    assert got == [
        ClaimableBatch(
            id=soon, owner="alice", models=("m",), expires_at=T0 + timedelta(hours=2),
            window=timedelta(hours=2), escalated=False, pending=3, finished=0, total=3,
        ),
        ClaimableBatch(
            id=late, owner="alice", models=("x", "y"), expires_at=T0 + timedelta(hours=24),
            window=timedelta(hours=24), escalated=False, pending=2, finished=2, total=5,
        ),
    ]  # fmt: skip


def test_set_escalation(repo: Repository) -> None:
    a, b, c = batch(repo, 1), batch(repo, 1), batch(repo, 1)
    t1, t2 = T0 + timedelta(minutes=1), T0 + timedelta(minutes=2)
    repo.set_escalation(escalate=[a, b], clear=[], now=t1)
    # a again: keeps its first stamp; b in both lists: stays escalated; c: was not
    repo.set_escalation(escalate=[a, b], clear=[b, c, uuid4()], now=t2)
    stamps = {x: repo.get_batch("alice", x, now=t2).escalated_at for x in (a, b, c)}
    assert stamps == {a: t1, b: t1, c: None}
    assert {x.id: x.escalated for x in repo.claimable_batches(now=t2)} == {
        a: True,
        b: True,
        c: False,
    }
    repo.set_escalation(escalate=[], clear=[a], now=t2)
    assert repo.get_batch("alice", a, now=t2).escalated_at is None
    assert repo.get_batch("alice", b, now=t2).escalated_at == t1
    (listed,) = [v for v in repo.list_batches("alice", now=t2).items if v.record.id == b]
    assert listed.escalated_at == t1
