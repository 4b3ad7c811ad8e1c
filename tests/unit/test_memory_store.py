"""The in-memory repository: the scenarios of tests/integration/test_repository.py.

The stateful equivalence test (tests/integration/test_store_equivalence.py) holds this
store equal to the PostgreSQL one; these are readable examples of the same contract
that run without a database.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import attrs
import pytest
from helpers import claim_by_model

from fusillade.core.attempts import AttemptResult, ClaimedRequest, ResultKind
from fusillade.core.ids import format_id
from fusillade.core.models import (
    BatchStatus,
    Failure,
    FailureReason,
    FilePurpose,
    RequestState,
    RequestTemplate,
)
from fusillade.errors import Conflict, NotFound, StoreError, ValidationError
from fusillade.store.interface import BatchSpec, DaemonInfo, Repository
from fusillade.store.memory import MemoryRepository

T0 = datetime(2026, 1, 1, tzinfo=UTC)
CANCEL = Failure(FailureReason.CANCELLED, "batch cancelled")


def templates(n: int, models: tuple[str, ...] = ("m1",)) -> Iterator[RequestTemplate]:
    for i in range(n):
        m = models[i % len(models)]
        yield RequestTemplate(custom_id=f"req-{i}", model=m, body=f'{{"model":"{m}","i":{i}}}')


@pytest.fixture
def repo() -> MemoryRepository:
    return MemoryRepository()


def make_batch(
    repo: Repository, n: int, *, owner: str = "alice", models: tuple[str, ...] = ("m1",)
) -> UUID:
    f = repo.create_file(owner, "in.jsonl", templates(n, models), now=T0)
    spec = BatchSpec(f.id, "/v1/chat/completions", "24h", timedelta(hours=24))
    return repo.create_batch(owner, spec, now=T0).record.id


def daemon(repo: Repository, now: datetime = T0) -> UUID:
    d = uuid4()
    repo.register_daemon(DaemonInfo(d, "host", 1, "test"), now=now)
    return d


def ok(c: ClaimedRequest, now: datetime = T0) -> AttemptResult:
    return c.result(ResultKind.SUCCEEDED, now, status=200, body="{}")


def test_file_roundtrip_isolation_and_soft_delete(repo: MemoryRepository) -> None:
    secret = RequestTemplate("c", "m1", "{}", api_key="sk-secret")
    f = repo.create_file("alice", "in.jsonl", [*templates(3), secret], now=T0)
    assert f.line_count == 4
    assert f.purpose is FilePurpose.BATCH
    assert repo.get_file("alice", f.id) == f
    with pytest.raises(NotFound):
        repo.get_file("bob", f.id)
    back = list(repo.iter_templates("alice", f.id))
    assert [t.custom_id for t in back] == ["req-0", "req-1", "req-2", "c"]
    assert back[-1].api_key is None
    repo.delete_file("alice", f.id, now=T0)
    with pytest.raises(NotFound):
        repo.get_file("alice", f.id)
    with pytest.raises(NotFound):
        repo.delete_file("alice", f.id, now=T0)


def test_a_failing_template_stream_stores_nothing(repo: MemoryRepository) -> None:
    def bad() -> Iterator[RequestTemplate]:
        yield from templates(2)
        raise ValueError("line 3 is broken")

    with pytest.raises(ValueError, match="line 3"):
        repo.create_file("alice", "in", bad(), now=T0)
    assert repo.list_files("alice").items == ()


def test_nul_is_refused_like_postgresql(repo: MemoryRepository) -> None:
    with pytest.raises(StoreError):
        repo.create_file("alice", "in", [RequestTemplate("a\x00", "m1", "{}")], now=T0)


def test_lists_page_newest_first(repo: MemoryRepository) -> None:
    ids = [repo.create_file("alice", f"{i}", templates(1), now=T0).id for i in range(5)]
    seen: list[UUID] = []
    after = None
    while True:
        page = repo.list_files("alice", after=after, limit=2)
        seen += [f.id for f in page.items]
        if not page.has_more:
            break
        after = page.items[-1].id
    assert seen == ids[::-1]  # strictly in creation order, even within one millisecond
    with pytest.raises(ValidationError):
        repo.list_files("alice", after=uuid4())

    batches = [make_batch(repo, 1) for _ in range(5)]
    make_batch(repo, 1, owner="bob")
    got: list[UUID] = []
    cursor = None
    while True:
        bpage = repo.list_batches("alice", now=T0, after=cursor, limit=2)
        got += [v.record.id for v in bpage.items]
        if not bpage.has_more:
            break
        cursor = bpage.items[-1].record.id
    assert got == batches[::-1]
    outputs = repo.list_files("alice", purposes={FilePurpose.BATCH_OUTPUT}, limit=100).items
    assert {o.batch_id for o in outputs} == set(batches)


def test_create_batch_validates_and_is_idempotent(repo: MemoryRepository) -> None:
    f = repo.create_file("alice", "in", templates(2), now=T0)
    with pytest.raises(ValidationError, match="line 1"):
        repo.create_batch("alice", BatchSpec(f.id, "/v1/embeddings", "24h", timedelta(1)), now=T0)
    spec = BatchSpec(f.id, "/v1/chat/completions", "24h", timedelta(hours=24), batch_id=uuid4())
    with pytest.raises(NotFound):
        repo.create_batch("bob", spec, now=T0)
    empty = repo.create_file("alice", "empty", [], now=T0)
    with pytest.raises(ValidationError, match="no requests"):
        repo.create_batch(
            "alice", BatchSpec(empty.id, "/v1/chat/completions", "1h", T0 - T0), now=T0
        )
    first = repo.create_batch("alice", spec, now=T0)
    second = repo.create_batch("alice", spec, now=T0 + timedelta(seconds=5))
    assert first == second
    assert second.counts.total == 2
    assert second.counts.pending == 2
    assert len(repo.list_requests("alice", first.record.id, limit=10).items) == 2
    with pytest.raises(Conflict):
        repo.create_batch("bob", spec, now=T0)


def test_claim_respects_slots_models_and_order(repo: MemoryRepository) -> None:
    make_batch(repo, 10, models=("a", "b"))
    d = daemon(repo)
    (claimable,) = repo.claimable_batches(now=T0)
    assert claimable.models == ("a", "b")
    claimed = claim_by_model(repo, d, {"a": 2, "b": 3, "c": 5, "d": 0}, now=T0)
    assert sorted(c.model for c in claimed) == ["a", "a", "b", "b", "b"]
    assert all(c.attempt == 1 and c.budget_used == 1 for c in claimed)
    assert [c.custom_id for c in claimed if c.model == "a"] == ["req-0", "req-2"]
    assert claim_by_model(repo, d, {}, now=T0) == []


def test_claim_order_earliest_deadline_first(repo: MemoryRepository) -> None:
    f = repo.create_file("alice", "in", templates(2), now=T0)
    late = repo.create_batch(
        "alice", BatchSpec(f.id, "/v1/chat/completions", "2h", timedelta(hours=2)), now=T0
    )
    soon = repo.create_batch(
        "alice", BatchSpec(f.id, "/v1/chat/completions", "1h", timedelta(hours=1)), now=T0
    )
    claimed = claim_by_model(repo, daemon(repo), {"m1": 3}, now=T0)
    assert [c.batch_id for c in claimed] == [soon.record.id, soon.record.id, late.record.id]


def test_threads_never_claim_a_row_twice(repo: MemoryRepository) -> None:
    make_batch(repo, 2000)
    seen: list[UUID] = []
    lock = threading.Lock()

    def worker(d: UUID) -> None:
        while got := claim_by_model(repo, d, {"m1": 37}, now=T0):
            with lock:
                seen.extend(c.id for c in got)

    threads = [threading.Thread(target=worker, args=(daemon(repo),)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(seen) == len(set(seen)) == 2000


def test_results_complete_batch_and_freeze(repo: MemoryRepository) -> None:
    b = make_batch(repo, 4)
    d = daemon(repo)
    c = claim_by_model(repo, d, {"m1": 4}, now=T0)
    t1 = T0 + timedelta(seconds=1)
    bad = Failure(FailureReason.HTTP_STATUS, "upstream answered 400", 400, '{"error":"bad"}')
    stats = repo.record_results(
        d,
        [
            c[0].result(ResultKind.SUCCEEDED, t1, 200, '{"ok":1}', None, None, 3, 4),
            c[1].result(ResultKind.SUCCEEDED, t1, 200, '{"ok":2}', None, None, 1),
            c[2].result(ResultKind.FAILED, t1, 400, '{"error":"bad"}', bad),
            c[3].result(
                ResultKind.RETRY,
                t1,
                failure=Failure(FailureReason.TIMEOUT, "read timeout"),
                not_before=t1 + timedelta(seconds=2),
            ),
        ],
    )
    assert stats.written == 4
    assert stats.lost == ()
    view = repo.get_batch("alice", b, now=t1)
    assert view.status is BatchStatus.IN_PROGRESS
    assert (view.counts.completed, view.counts.failed, view.counts.pending) == (2, 1, 1)
    assert claim_by_model(repo, d, {"m1": 5}, now=t1) == []  # not due yet
    t3 = t1 + timedelta(seconds=2)
    (again,) = claim_by_model(repo, d, {"m1": 5}, now=t3)
    assert again.attempt == 2
    assert again.budget_used == 2
    repo.record_results(d, [ok(again, t3)])
    view = repo.get_batch("alice", b, now=t3)
    assert view.status is BatchStatus.COMPLETED
    assert view.completed_at == t3
    assert view.record.frozen_counts is not None
    assert view.record.usage is not None
    assert view.record.usage.input_tokens == 4
    out = list(repo.iter_results("alice", b, errors=False, page_size=1))
    err = list(repo.iter_results("alice", b, errors=True))
    # completion order; ties (same finished_at) in request id order
    assert {line.custom_id for line in out[:2]} == {"req-0", "req-1"}
    assert out[2].custom_id == "req-3"
    assert len(err) == 1
    assert err[0].status == 400
    assert err[0].body == '{"error":"bad"}'
    assert err[0].failure_reason is FailureReason.HTTP_STATUS
    with pytest.raises(NotFound):
        list(repo.iter_results("bob", b, errors=False))


def test_a_result_breaking_a_constraint_writes_nothing(repo: MemoryRepository) -> None:
    make_batch(repo, 2)
    d = daemon(repo)
    c = claim_by_model(repo, d, {"m1": 2}, now=T0)
    no_body = c[1].result(ResultKind.SUCCEEDED, T0, status=200)
    with pytest.raises(StoreError):
        repo.record_results(d, [ok(c[0]), no_body])
    assert repo.record_results(d, [ok(c[0])]).written == 1


def test_late_write_after_reclaim_is_refused(repo: MemoryRepository) -> None:
    b = make_batch(repo, 1)
    d1 = daemon(repo)
    (c1,) = claim_by_model(repo, d1, {"m1": 1}, now=T0)
    later = T0 + timedelta(minutes=5)
    d2 = daemon(repo, later)
    stats = repo.reclaim_dead(now=later, stale_before=later - timedelta(seconds=30), max_attempts=5)
    assert stats.requeued == 1
    assert not repo.heartbeat(d1, now=later)
    (c2,) = claim_by_model(repo, d2, {"m1": 1}, now=later)
    assert c2.id == c1.id
    assert c2.attempt == 2
    repo.record_results(d2, [ok(c2, later)])
    late = repo.record_results(d1, [c1.result(ResultKind.RETRY, later)])
    assert late.written == 0
    assert late.lost == (c1.id,)
    view = repo.get_batch("alice", b, now=later)
    assert view.status is BatchStatus.COMPLETED
    assert view.counts.completed == 1


def test_reclaim_spends_the_budget_and_release_refunds_it(repo: MemoryRepository) -> None:
    b = make_batch(repo, 1)
    now = T0
    for attempt in range(1, 4):
        d = daemon(repo, now)
        (c,) = claim_by_model(repo, d, {"m1": 1}, now=now)
        assert c.attempt == attempt
        now += timedelta(minutes=5)
        stats = repo.reclaim_dead(now=now, stale_before=now - timedelta(minutes=1), max_attempts=3)
    assert stats.failed == 1
    (line,) = repo.iter_results("alice", b, errors=True)
    assert line.failure_reason is FailureReason.LOST
    assert line.finished_at == now

    make_batch(repo, 3)
    d1, d2 = daemon(repo, now), daemon(repo, now)
    claimed = claim_by_model(repo, d1, {"m1": 3}, now=now)
    assert repo.release(d1, now=now, request_ids=[]) == 0
    assert repo.release(d1, now=now) == 3
    again = claim_by_model(repo, d2, {"m1": 3}, now=now)
    assert {c.id for c in again} == {c.id for c in claimed}
    assert all(c.attempt == 2 and c.budget_used == 1 for c in again)


def test_timed_out_rows_are_reclaimed(repo: MemoryRepository) -> None:
    make_batch(repo, 2)
    d = daemon(repo)
    claim_by_model(repo, d, {"m1": 1}, now=T0)
    later = T0 + timedelta(minutes=10)
    claim_by_model(repo, d, {"m1": 1}, now=later)
    stats = repo.reclaim_timed_out(
        now=later, claimed_before=later - timedelta(minutes=5), max_attempts=5
    )
    assert (stats.requeued, stats.failed) == (1, 0)


def test_cancelled_batch_rows_are_never_claimed(repo: MemoryRepository) -> None:
    cancelled = make_batch(repo, 30)
    live = make_batch(repo, 5)
    view = repo.cancel_batch("alice", cancelled, now=T0)
    assert view.status is BatchStatus.CANCELLED
    claimed = claim_by_model(repo, daemon(repo), {"m1": 10}, now=T0)
    assert {c.batch_id for c in claimed} == {live}
    assert len(claimed) == 5
    errors = list(repo.iter_results("alice", cancelled, errors=True, page_size=7))
    assert len(errors) == 30
    assert {e.failure_reason for e in errors} == {"cancelled"}


def test_cancel_with_work_in_flight_and_late_success(repo: MemoryRepository) -> None:
    b = make_batch(repo, 3)
    d = daemon(repo)
    c = claim_by_model(repo, d, {"m1": 2}, now=T0)
    assert repo.cancel_batch("alice", b, now=T0).status is BatchStatus.CANCELLING
    assert repo.batches_to_abort([b, uuid4()], now=T0) == {b: "cancelled"}
    assert claim_by_model(repo, d, {"m1": 5}, now=T0) == []
    with pytest.raises(Conflict):
        repo.retry_batch("alice", b, now=T0)
    cancel = [x.result(ResultKind.CANCELLED, T0, failure=CANCEL) for x in c]
    assert repo.record_results(d, cancel).written == 2
    frozen = repo.get_batch("alice", b, now=T0)
    assert frozen.status is BatchStatus.CANCELLED
    assert frozen.counts.canceled == 3
    # a billed late success replaces canceled and repairs the frozen counts
    t1 = T0 + timedelta(seconds=1)
    late = c[0].result(ResultKind.SUCCEEDED, t1, 200, "{}", None, None, 5, 6)
    assert repo.record_results(d, [late]).written == 1
    view = repo.get_batch("alice", b, now=t1)
    assert (view.counts.completed, view.counts.canceled) == (1, 2)
    assert view.counts.is_consistent
    assert view.record.usage is not None
    assert view.record.usage.total_tokens == 11
    # ... but a late retry or a second success is refused
    retry = c[1].result(ResultKind.RETRY, t1, not_before=t1)
    assert repo.record_results(d, [retry, ok(c[0], t1)]).written == 0
    assert repo.cancel_batch("alice", b, now=t1).counts == view.counts


def test_expiry_and_retry(repo: MemoryRepository) -> None:
    b = make_batch(repo, 3)
    d = daemon(repo)
    (c,) = claim_by_model(repo, d, {"m1": 1}, now=T0)
    repo.record_results(d, [ok(c)])
    late = T0 + timedelta(hours=25)
    assert claim_by_model(repo, d, {"m1": 5}, now=late) == []
    assert repo.batches_to_abort([b], now=late) == {b: "expired"}
    assert repo.sweep(now=late) == 2
    view = repo.get_batch("alice", b, now=late)
    assert view.status is BatchStatus.EXPIRED
    assert view.record.frozen_counts is not None
    assert (view.counts.completed, view.counts.canceled) == (1, 2)
    assert {e.failure_reason for e in repo.iter_results("alice", b, errors=True)} == {"expired"}
    again = repo.retry_batch("alice", b, now=late, include_cancelled=True)
    assert again.status is BatchStatus.IN_PROGRESS
    assert again.record.version == 1
    assert again.record.expires_at == late + timedelta(hours=24)
    assert again.counts.pending == 2
    assert again.counts.completed == 1
    assert len(claim_by_model(repo, d, {"m1": 5}, now=late)) == 2


def test_retry_failed_resets_counts_and_budget(repo: MemoryRepository) -> None:
    b = make_batch(repo, 2)
    d = daemon(repo)
    c = claim_by_model(repo, d, {"m1": 2}, now=T0)
    bad = Failure(FailureReason.HTTP_STATUS, "500", 500, "oops")
    repo.record_results(d, [ok(c[0]), c[1].result(ResultKind.FAILED, T0, 500, "oops", bad)])
    assert repo.get_batch("alice", b, now=T0).status is BatchStatus.COMPLETED
    view = repo.retry_batch("alice", b, now=T0)
    assert view.status is BatchStatus.IN_PROGRESS
    assert view.record.frozen_counts is None
    assert view.counts.pending == 1
    (again,) = claim_by_model(repo, d, {"m1": 2}, now=T0)
    assert again.id == c[1].id
    assert again.attempt == 2
    assert again.budget_used == 1
    repo.record_results(d, [ok(again)])
    assert repo.get_batch("alice", b, now=T0).counts.completed == 2


def test_list_requests_and_detail(repo: MemoryRepository) -> None:
    b = make_batch(repo, 5)
    (c,) = claim_by_model(repo, d := daemon(repo), {"m1": 1}, now=T0)
    repo.record_results(d, [ok(c)])
    page = repo.list_requests("alice", b, limit=3)
    assert [r.line_number for r in page.items] == [1, 2, 3]
    assert page.has_more
    nxt = repo.list_requests("alice", b, after=page.items[-1].id, limit=3)
    assert [r.line_number for r in nxt.items] == [4, 5]
    assert not nxt.has_more
    done = repo.list_requests("alice", b, states=[RequestState.COMPLETED])
    assert [r.id for r in done.items] == [c.id]
    detail = repo.get_request("alice", c.id)
    assert detail.response_body == "{}"
    assert detail.summary.custom_id == "req-0"
    with pytest.raises(NotFound):
        repo.get_request("bob", c.id)
    with pytest.raises(ValidationError):
        repo.list_requests("alice", b, after=uuid4())
    with pytest.raises(NotFound):
        repo.list_requests("bob", b)


def test_daemon_lifecycle(repo: MemoryRepository) -> None:
    d = daemon(repo)
    assert repo.heartbeat(d, now=T0)
    assert not repo.heartbeat(uuid4(), now=T0)
    later = T0 + timedelta(minutes=5)
    repo.reclaim_dead(now=later, stale_before=later - timedelta(minutes=1), max_attempts=5)
    assert not repo.heartbeat(d, now=later)
    repo.register_daemon(DaemonInfo(d, "host", 1, "test"), now=later)
    assert repo.heartbeat(d, now=later)
    repo.stop_daemon(d, now=later)
    assert not repo.heartbeat(d, now=later)


def test_record_results_writes_what_the_core_computed(repo: MemoryRepository) -> None:
    """As record_results.sql: the computed values are stored as they are (here a retry
    due before its attempt ended, which the table would never compute), and a stale
    attempt of the same daemon is refused."""
    make_batch(repo, 2)
    d = daemon(repo)
    c = claim_by_model(repo, d, {"m1": 2}, now=T0)
    retry = c[0].result(ResultKind.RETRY, T0, failure=Failure(FailureReason.TIMEOUT, "t"))
    early = T0 - timedelta(hours=1)
    retry = attrs.evolve(retry, request=attrs.evolve(retry.request, not_before=early))
    assert repo.record_results(d, [retry]).written == 1
    assert repo._rows[c[0].id].req.not_before == early
    assert repo.release(d, now=T0) == 1
    (again,) = (x for x in claim_by_model(repo, d, {"m1": 2}, now=T0) if x.id == c[1].id)
    stale = repo.record_results(d, [ok(c[1])])
    assert stale.written == 0 and stale.lost == (c[1].id,)
    assert repo.record_results(d, [ok(again)]).written == 1


def test_each_transition_is_logged_once(
    repo: MemoryRepository, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fusillade.batches")
    cancelled = make_batch(repo, 3)
    expiring = make_batch(repo, 2)
    repo.cancel_batch("alice", cancelled, now=T0)
    repo.cancel_batch("alice", cancelled, now=T0)  # already cancelled: nothing new
    later = T0 + timedelta(days=2)
    repo.sweep(now=later)
    repo.sweep(now=later)
    assert sorted(map(str, repo.settled_batches())) == sorted(map(str, [expiring]))
    for _ in range(2):
        repo.get_batch("alice", expiring, now=later)
        repo.get_batch("alice", cancelled, now=later)
    assert repo.settled_batches() == []
    seen = [(r.event, r.batch_id, getattr(r, "status", None)) for r in caplog.records]
    c, e = format_id("batch", cancelled), format_id("batch", expiring)
    assert seen == [
        ("batch_created", c, None),
        ("batch_created", e, None),
        ("batch_cancel_requested", c, None),
        ("batch_finished", c, "cancelled"),
        ("batch_expired", e, None),
        ("batch_finished", e, "expired"),
    ]
