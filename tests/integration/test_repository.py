"""The PostgreSQL repository against a real server: files, batches, claims, results."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import attrs
import psycopg
import pytest
from helpers import claim_by_model

from fusillade.core.attempts import AttemptResult, ClaimedRequest, ResultKind
from fusillade.core.models import (
    BatchStatus,
    Failure,
    FailureReason,
    FilePurpose,
    RequestState,
    RequestTemplate,
)
from fusillade.errors import Conflict, NotFound, ValidationError
from fusillade.store.interface import BatchSpec, DaemonInfo
from fusillade.store.postgres import PostgresRepository
from fusillade.store.postgres._daemon import record_results_params
from fusillade.store.sqlfiles import load_queries

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def templates(n: int, models: tuple[str, ...] = ("m1",)) -> Iterator[RequestTemplate]:
    for i in range(n):
        yield RequestTemplate(
            custom_id=f"req-{i}",
            model=models[i % len(models)],
            body=f'{{"model":"{models[i % len(models)]}","i":{i}}}',
        )


@pytest.fixture
def repo(database_url: str) -> Iterator[PostgresRepository]:
    with PostgresRepository(database_url, max_size=10) as r:
        yield r


def make_batch(
    repo: PostgresRepository, n: int, *, owner: str = "alice", models: tuple[str, ...] = ("m1",)
) -> UUID:
    f = repo.create_file(owner, "in.jsonl", templates(n, models), now=T0)
    view = repo.create_batch(
        owner,
        BatchSpec(f.id, "/v1/chat/completions", "24h", timedelta(hours=24)),
        now=T0,
    )
    return view.record.id


def daemon(repo: PostgresRepository, now: datetime = T0) -> UUID:
    d = uuid4()
    repo.register_daemon(DaemonInfo(d, "host", 1, "test"), now=now)
    return d


def ok(c: ClaimedRequest, now: datetime = T0) -> AttemptResult:
    return c.result(ResultKind.SUCCEEDED, now, status=200, body="{}")


def test_file_roundtrip_and_isolation(repo: PostgresRepository) -> None:
    f = repo.create_file("alice", "in.jsonl", templates(3), now=T0)
    assert f.line_count == 3
    assert repo.get_file("alice", f.id) == f
    with pytest.raises(NotFound):
        repo.get_file("bob", f.id)
    assert [t.custom_id for t in repo.iter_templates("alice", f.id)] == [
        "req-0",
        "req-1",
        "req-2",
    ]
    repo.delete_file("alice", f.id, now=T0)
    with pytest.raises(NotFound):
        repo.get_file("alice", f.id)


def test_values_stored_byte_for_byte(repo: PostgresRepository) -> None:
    nasty = "x'; DROP TABLE requests; --\r\nX-Injected: 1\t\u00e9\U0001f600"
    t = RequestTemplate(custom_id=nasty, model=nasty, body='{"model":"\\u0000"}')
    f = repo.create_file("alice", nasty, [t], now=T0)
    assert repo.get_file("alice", f.id).filename == nasty
    (back,) = repo.iter_templates("alice", f.id)
    assert (back.custom_id, back.model, back.body) == (t.custom_id, t.model, t.body)


def test_list_files_pages_newest_first(repo: PostgresRepository) -> None:
    ids = [repo.create_file("alice", f"{i}", templates(1), now=T0).id for i in range(5)]
    seen: list[UUID] = []
    after = None
    while True:
        page = repo.list_files("alice", after=after, limit=2)
        seen += [f.id for f in page.items]
        if not page.has_more:
            break
        after = page.items[-1].id
    assert seen == ids[::-1]
    with pytest.raises(ValidationError):
        repo.list_files("alice", after=uuid4())


def test_create_batch_validates(repo: PostgresRepository) -> None:
    f = repo.create_file("alice", "in", templates(2), now=T0)
    spec = BatchSpec(f.id, "/v1/embeddings", "24h", timedelta(hours=24))
    with pytest.raises(ValidationError, match="line 1"):
        repo.create_batch("alice", spec, now=T0)
    with pytest.raises(NotFound):
        repo.create_batch(
            "bob", BatchSpec(f.id, "/v1/chat/completions", "24h", timedelta(hours=24)), now=T0
        )
    empty = repo.create_file("alice", "empty", [], now=T0)
    with pytest.raises(ValidationError, match="no requests"):
        repo.create_batch(
            "alice",
            BatchSpec(empty.id, "/v1/chat/completions", "24h", timedelta(hours=24)),
            now=T0,
        )


def test_create_batch_is_idempotent(repo: PostgresRepository) -> None:
    """A re-delivered create (same batch id) must not insert every request twice."""
    f = repo.create_file("alice", "in", templates(50), now=T0)
    spec = BatchSpec(f.id, "/v1/chat/completions", "24h", timedelta(hours=24), batch_id=uuid4())
    first = repo.create_batch("alice", spec, now=T0)
    second = repo.create_batch("alice", spec, now=T0 + timedelta(seconds=5))
    assert first.record.id == second.record.id
    assert second.counts.total == 50 and second.counts.pending == 50
    with psycopg.connect(repo.conninfo) as conn:
        (n,) = conn.execute("SELECT count(*) FROM requests").fetchone()  # type: ignore[misc]
    assert n == 50
    with pytest.raises(Conflict):
        repo.create_batch("bob", spec, now=T0)


def test_claim_respects_slots_and_models(repo: PostgresRepository) -> None:
    make_batch(repo, 10, models=("a", "b"))
    d = daemon(repo)
    (claimable,) = repo.claimable_batches(now=T0)
    assert sorted(claimable.models) == ["a", "b"]
    claimed = claim_by_model(repo, d, {"a": 2, "b": 3, "c": 5}, now=T0)
    assert sorted(c.model for c in claimed) == ["a", "a", "b", "b", "b"]
    assert all(c.attempt == 1 and c.budget_used == 1 for c in claimed)
    # earliest line first
    assert {c.custom_id for c in claimed if c.model == "a"} == {"req-0", "req-2"}


def test_claim_takes_due_retries_in_line_order_and_never_those_backing_off(
    repo: PostgresRepository,
) -> None:
    """Rows pending again after an attempt are read from an index of their own (by
    not_before, migration 0005): due, they are claimed in line order among the batch's
    other rows; backing off, never; reclaimed, at once."""
    b = make_batch(repo, 7)
    d = daemon(repo)
    first = claim_by_model(repo, d, {"m1": 3}, now=T0)
    assert [c.custom_id for c in first] == ["req-0", "req-1", "req-2"]
    soon, later = T0 + timedelta(seconds=10), T0 + timedelta(hours=1)
    repo.record_results(
        d,
        [
            first[0].result(ResultKind.RETRY, T0, status=429, not_before=later),
            first[1].result(ResultKind.RETRY, T0, status=503, not_before=soon),
            ok(first[2]),
        ],
    )
    at = T0 + timedelta(seconds=20)
    # req-1 is due and comes before the fresh req-3 by line; req-0 backs off until later
    got = claim_by_model(repo, d, {"m1": 2}, now=at)
    assert [(c.custom_id, c.attempt, c.batch_id) for c in got] == [
        ("req-1", 2, b),
        ("req-3", 1, b),
    ]
    assert [c.custom_id for c in claim_by_model(repo, d, {"m1": 10}, now=at)] == [
        "req-4",
        "req-5",
        "req-6",
    ]
    assert claim_by_model(repo, d, {"m1": 10}, now=at) == []
    # a row reclaimed from a dead daemon is pending again after an attempt, due at once
    stats = repo.reclaim_timed_out(now=at, claimed_before=later, max_attempts=5)
    assert stats.requeued == 5
    again = claim_by_model(repo, d, {"m1": 10}, now=at)
    assert [c.custom_id for c in again] == ["req-1", "req-3", "req-4", "req-5", "req-6"]
    assert [c.custom_id for c in claim_by_model(repo, d, {"m1": 10}, now=later)] == ["req-0"]


def test_eight_threads_never_claim_a_row_twice(repo: PostgresRepository) -> None:
    make_batch(repo, 5000)
    seen: list[UUID] = []
    lock = threading.Lock()
    daemons = [daemon(repo) for _ in range(8)]

    def worker(d: UUID) -> None:
        while True:
            got = claim_by_model(repo, d, {"m1": 37}, now=T0)
            if not got:
                return
            with lock:
                seen.extend(c.id for c in got)

    threads = [threading.Thread(target=worker, args=(d,)) for d in daemons]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(seen) == 5000
    assert len(set(seen)) == 5000


def test_results_complete_batch_and_freeze(repo: PostgresRepository) -> None:
    b = make_batch(repo, 4)
    d = daemon(repo)
    claimed = claim_by_model(repo, d, {"m1": 4}, now=T0)
    t1 = T0 + timedelta(seconds=1)
    results = [
        claimed[0].result(ResultKind.SUCCEEDED, t1, 200, '{"ok":1}', None, None, 3, 4),
        claimed[1].result(ResultKind.SUCCEEDED, t1, 200, '{"ok":2}', None, None, 1),
        claimed[2].result(
            ResultKind.FAILED,
            t1,
            400,
            '{"error":"bad"}',
            Failure(FailureReason.HTTP_STATUS, "upstream answered 400", 400, '{"error":"bad"}'),
        ),
        claimed[3].result(
            ResultKind.RETRY,
            t1,
            failure=Failure(FailureReason.TIMEOUT, "read timeout"),
            not_before=t1 + timedelta(seconds=2),
        ),
    ]
    stats = repo.record_results(d, results)
    assert stats.written == 4 and stats.lost == ()
    view = repo.get_batch("alice", b, now=t1)
    assert view.status is BatchStatus.IN_PROGRESS
    assert (view.counts.completed, view.counts.failed, view.counts.pending) == (2, 1, 1)
    # not due yet
    assert claim_by_model(repo, d, {"m1": 5}, now=t1) == []
    t3 = t1 + timedelta(seconds=2)
    (again,) = claim_by_model(repo, d, {"m1": 5}, now=t3)
    assert again.attempt == 2 and again.budget_used == 2
    repo.record_results(d, [ok(again, t3)])
    view = repo.get_batch("alice", b, now=t3)
    assert view.status is BatchStatus.COMPLETED
    assert view.record.frozen_counts is not None
    assert view.record.usage is not None and view.record.usage.input_tokens == 4
    out = list(repo.iter_results("alice", b, errors=False))
    err = list(repo.iter_results("alice", b, errors=True))
    assert len(out) == 3 and len(err) == 1
    assert err[0].status == 400 and err[0].body == '{"error":"bad"}'
    with pytest.raises(NotFound):
        list(repo.iter_results("bob", b, errors=False))


def test_frozen_counts_equal_a_recount_and_are_not_recounted(repo: PostgresRepository) -> None:
    """A terminal batch is read from its row, never recounted."""
    b = make_batch(repo, 20)
    d = daemon(repo)
    claimed = claim_by_model(repo, d, {"m1": 20}, now=T0)
    repo.record_results(d, [ok(c) for c in claimed])
    view = repo.get_batch("alice", b, now=T0)
    with psycopg.connect(repo.conninfo) as conn:
        rows = conn.execute(
            "SELECT state, count(*) FROM requests WHERE batch_id = %s GROUP BY state", (b,)
        ).fetchall()
        assert dict(rows) == {"completed": 20}
        assert view.counts.completed == 20 and view.counts.total == 20
        # Tamper with the rows: a frozen batch must not notice.
        conn.execute("UPDATE requests SET state = 'failed', failure_reason = 'lost'")
    again = repo.get_batch("alice", b, now=T0)
    assert again.counts == view.counts


def test_late_write_after_reclaim_is_refused(repo: PostgresRepository) -> None:
    """A late result from a daemon whose claim was reclaimed must not revive the row."""
    b = make_batch(repo, 1)
    d1 = daemon(repo)
    (c1,) = claim_by_model(repo, d1, {"m1": 1}, now=T0)
    later = T0 + timedelta(minutes=5)
    d2 = daemon(repo, later)
    stats = repo.reclaim_dead(now=later, stale_before=later - timedelta(seconds=30), max_attempts=5)
    assert stats.requeued == 1
    (c2,) = claim_by_model(repo, d2, {"m1": 1}, now=later)
    assert c2.id == c1.id and c2.attempt == 2
    repo.record_results(d2, [ok(c2, later)])
    late = repo.record_results(
        d1,
        [c1.result(ResultKind.RETRY, later, not_before=later)],
    )
    assert late.written == 0 and late.lost == (c1.id,)
    view = repo.get_batch("alice", b, now=later)
    assert view.status is BatchStatus.COMPLETED and view.counts.completed == 1


def test_reclaim_spends_the_budget(repo: PostgresRepository) -> None:
    b = make_batch(repo, 1)
    now = T0
    for attempt in range(1, 4):
        d = daemon(repo, now)
        (c,) = claim_by_model(repo, d, {"m1": 1}, now=now)
        assert c.attempt == attempt
        now += timedelta(minutes=5)
        stats = repo.reclaim_dead(now=now, stale_before=now - timedelta(minutes=1), max_attempts=3)
    assert stats.failed == 1
    view = repo.get_batch("alice", b, now=now)
    assert view.counts.failed == 1
    (line,) = repo.iter_results("alice", b, errors=True)
    assert line.failure_reason is FailureReason.LOST


def test_release_refunds_the_attempt(repo: PostgresRepository) -> None:
    make_batch(repo, 3)
    d1, d2 = daemon(repo), daemon(repo)
    claimed = claim_by_model(repo, d1, {"m1": 3}, now=T0)
    assert repo.release(d1, now=T0) == 3
    again = claim_by_model(repo, d2, {"m1": 3}, now=T0)
    assert {c.id for c in again} == {c.id for c in claimed}
    assert all(c.attempt == 2 and c.budget_used == 1 for c in again)


def test_timed_out_rows_are_reclaimed(repo: PostgresRepository) -> None:
    make_batch(repo, 2)
    d = daemon(repo)
    claim_by_model(repo, d, {"m1": 1}, now=T0)
    later = T0 + timedelta(minutes=10)
    claim_by_model(repo, d, {"m1": 1}, now=later)
    stats = repo.reclaim_timed_out(
        now=later, claimed_before=later - timedelta(minutes=5), max_attempts=5
    )
    assert stats.requeued == 1


def test_cancelled_batch_rows_are_never_claimed(repo: PostgresRepository) -> None:
    """Rows of a cancelled batch must not fill the claim limit and block other work."""
    cancelled = make_batch(repo, 30_000 // 1000)
    live = make_batch(repo, 5)
    d = daemon(repo)
    view = repo.cancel_batch("alice", cancelled, now=T0)
    assert view.status is BatchStatus.CANCELLED
    claimed = claim_by_model(repo, d, {"m1": 10}, now=T0)
    assert {c.batch_id for c in claimed} == {live}
    assert len(claimed) == 5
    errors = list(repo.iter_results("alice", cancelled, errors=True))
    assert len(errors) == 30 and {e.failure_reason for e in errors} == {"cancelled"}


def test_cancel_with_work_in_flight(repo: PostgresRepository) -> None:
    b = make_batch(repo, 3)
    d = daemon(repo)
    claimed = claim_by_model(repo, d, {"m1": 2}, now=T0)
    view = repo.cancel_batch("alice", b, now=T0)
    assert view.status is BatchStatus.CANCELLING
    assert repo.batches_to_abort([b], now=T0) == {b: "cancelled"}
    assert claim_by_model(repo, d, {"m1": 5}, now=T0) == []
    cancel = Failure(FailureReason.CANCELLED, "batch cancelled")
    repo.record_results(
        d,
        [
            ok(claimed[0]),
            claimed[1].result(ResultKind.CANCELLED, T0, failure=cancel),
        ],
    )
    view = repo.get_batch("alice", b, now=T0)
    assert view.status is BatchStatus.CANCELLED
    assert (view.counts.completed, view.counts.canceled) == (1, 2)
    # cancelling a finished batch returns it unchanged
    assert repo.cancel_batch("alice", b, now=T0).status is BatchStatus.CANCELLED


def _cancelled_in_flight(repo: PostgresRepository) -> tuple[UUID, UUID, list[ClaimedRequest]]:
    """A batch of two, cancelled while both were in flight: settled, not yet frozen."""
    b = make_batch(repo, 2)
    d = daemon(repo)
    c = claim_by_model(repo, d, {"m1": 2}, now=T0)
    repo.cancel_batch("alice", b, now=T0)
    cancel = Failure(FailureReason.CANCELLED, "batch cancelled")
    repo.record_results(d, [x.result(ResultKind.CANCELLED, T0, failure=cancel) for x in c])
    return b, d, c


def test_late_success_repairs_frozen_counts(repo: PostgresRepository) -> None:
    """A billed result may replace canceled; the frozen counts are repaired with it."""
    b, d, c = _cancelled_in_flight(repo)
    frozen = repo.get_batch("alice", b, now=T0)
    assert frozen.record.frozen_counts is not None and frozen.counts.canceled == 2
    late = repo.record_results(d, [ok(c[0], T0 + timedelta(seconds=1))])
    assert late.written == 1
    view = repo.get_batch("alice", b, now=T0)
    assert (view.counts.completed, view.counts.canceled) == (1, 1)
    assert view.counts.is_consistent
    # a late retry/failure for a canceled row is refused
    lost = repo.record_results(d, [c[1].result(ResultKind.RETRY, T0, not_before=T0)])
    assert lost.written == 0


def _waits_on_a_lock(database_url: str, done: threading.Event) -> None:
    """Until another session of this database waits on a lock, or ``done`` is set."""
    with psycopg.connect(database_url, autocommit=True) as watcher:
        for _ in range(1000):
            waiting = watcher.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            ).fetchone()
            if done.is_set() or (waiting is not None and waiting[0] > 0):
                return
            done.wait(0.01)
    raise AssertionError("neither finished nor waited on a lock")


def _in_thread(fn: Callable[[], object]) -> tuple[threading.Thread, threading.Event]:
    done = threading.Event()

    def run() -> None:
        fn()
        done.set()

    t = threading.Thread(target=run)
    t.start()
    return t, done


def test_late_success_racing_a_freeze_that_holds_the_batch_first(
    repo: PostgresRepository, database_url: str
) -> None:
    """The freeze counts the row canceled; the success, committed after it, repairs it."""
    b, d, (first, _) = _cancelled_in_flight(repo)
    q = load_queries()
    with psycopg.connect(database_url) as freezer:
        (version,) = freezer.execute("SELECT version FROM batches WHERE id = %s", (b,)).fetchone()
        freezer.execute(q.lock_batch_for_freeze, {"id": b})
        frozen = freezer.execute(q.freeze_batch, {"id": b, "version": version}).fetchone()
        assert frozen is not None  # frozen with the row canceled, not yet committed
        late, done = _in_thread(lambda: repo.record_results(d, [ok(first)]))
        _waits_on_a_lock(database_url, done)
        freezer.execute(q.fold_batch_state_counts, {"id": b})
        freezer.commit()
    late.join()
    view = repo.get_batch("alice", b, now=T0)
    assert view.record.frozen_counts is not None
    assert (view.counts.completed, view.counts.canceled) == (1, 1)


def test_late_success_racing_a_freeze_that_comes_second(
    repo: PostgresRepository, database_url: str
) -> None:
    """The success holds the batch row until it commits; the freeze then counts it."""
    b, d, (first, _) = _cancelled_in_flight(repo)
    with psycopg.connect(database_url) as writer:
        params = record_results_params(d, [ok(first)])
        assert len(writer.execute(load_queries().record_results, params).fetchall()) == 1
        reader, done = _in_thread(lambda: repo.get_batch("alice", b, now=T0))
        _waits_on_a_lock(database_url, done)
        writer.commit()
    reader.join()
    view = repo.get_batch("alice", b, now=T0)
    assert view.record.frozen_counts is not None
    assert (view.counts.completed, view.counts.canceled) == (1, 1)


def test_expiry(repo: PostgresRepository) -> None:
    b = make_batch(repo, 3)
    d = daemon(repo)
    (c,) = claim_by_model(repo, d, {"m1": 1}, now=T0)
    repo.record_results(d, [ok(c)])
    late = T0 + timedelta(hours=25)
    assert claim_by_model(repo, d, {"m1": 5}, now=late) == []
    assert repo.sweep(now=late) == 2
    view = repo.get_batch("alice", b, now=late)
    assert view.status is BatchStatus.EXPIRED
    assert (view.counts.completed, view.counts.canceled) == (1, 2)
    errors = list(repo.iter_results("alice", b, errors=True))
    assert {e.failure_reason for e in errors} == {"expired"}


def test_retry_failed_resets_counts_and_budget(repo: PostgresRepository) -> None:
    b = make_batch(repo, 2)
    d = daemon(repo)
    c = claim_by_model(repo, d, {"m1": 2}, now=T0)
    bad = Failure(FailureReason.HTTP_STATUS, "500", 500, "oops")
    repo.record_results(
        d,
        [ok(c[0]), c[1].result(ResultKind.FAILED, T0, 500, "oops", bad)],
    )
    assert repo.get_batch("alice", b, now=T0).status is BatchStatus.COMPLETED
    view = repo.retry_batch("alice", b, now=T0)
    assert view.status is BatchStatus.IN_PROGRESS
    assert view.record.frozen_counts is None and view.counts.pending == 1
    (again,) = claim_by_model(repo, d, {"m1": 2}, now=T0)
    assert again.id == c[1].id and again.attempt == 2 and again.budget_used == 1
    repo.record_results(d, [ok(again)])
    view = repo.get_batch("alice", b, now=T0)
    assert view.status is BatchStatus.COMPLETED and view.counts.completed == 2


def test_list_batches_pages_and_isolation(repo: PostgresRepository) -> None:
    ids = [make_batch(repo, 1) for _ in range(5)]
    make_batch(repo, 1, owner="bob")
    got: list[UUID] = []
    after = None
    while True:
        page = repo.list_batches("alice", now=T0, after=after, limit=2)
        got += [v.record.id for v in page.items]
        if not page.has_more:
            break
        after = page.items[-1].record.id
    assert got == ids[::-1]
    with pytest.raises(NotFound):
        repo.get_batch("bob", ids[0], now=T0)
    with pytest.raises(NotFound):
        repo.cancel_batch("bob", ids[0], now=T0)


def test_list_requests_and_detail(repo: PostgresRepository) -> None:
    b = make_batch(repo, 5)
    d = daemon(repo)
    (c,) = claim_by_model(repo, d, {"m1": 1}, now=T0)
    repo.record_results(d, [ok(c)])
    page = repo.list_requests("alice", b, limit=3)
    assert [r.line_number for r in page.items] == [1, 2, 3] and page.has_more
    nxt = repo.list_requests("alice", b, after=page.items[-1].id, limit=3)
    assert [r.line_number for r in nxt.items] == [4, 5] and not nxt.has_more
    done = repo.list_requests("alice", b, states=[RequestState.COMPLETED])
    assert [r.id for r in done.items] == [c.id]
    detail = repo.get_request("alice", c.id)
    assert detail.response_body == "{}" and detail.summary.custom_id == "req-0"
    with pytest.raises(NotFound):
        repo.get_request("bob", c.id)


def test_heartbeat_after_declared_dead(repo: PostgresRepository) -> None:
    d = daemon(repo)
    assert repo.heartbeat(d, now=T0)
    later = T0 + timedelta(minutes=5)
    repo.reclaim_dead(now=later, stale_before=later - timedelta(minutes=1), max_attempts=5)
    assert not repo.heartbeat(d, now=later)
    repo.register_daemon(DaemonInfo(d, "host", 1, "test"), now=later)
    assert repo.heartbeat(d, now=later)


def test_output_files_are_listed_as_files(repo: PostgresRepository) -> None:
    b = make_batch(repo, 1)
    view = repo.get_batch("alice", b, now=T0)
    out = repo.get_file("alice", view.record.output_file_id)
    assert out.purpose is FilePurpose.BATCH_OUTPUT and out.batch_id == b


def test_a_hung_query_times_out_instead_of_freezing(database_url: str) -> None:
    """Every connection carries a statement timeout: a stuck query becomes
    StoreUnavailable (the daemon's loops back off and go on) instead of hanging."""
    from fusillade.errors import StoreUnavailable

    with PostgresRepository(database_url, statement_timeout_ms=200) as repo:
        with pytest.raises(StoreUnavailable), repo._tx() as cur:
            cur.execute("SELECT pg_sleep(5)")
        repo.ping()  # the pool recovers


def test_retry_of_a_batch_with_nothing_to_retry_leaves_it_alone(
    repo: PostgresRepository,
) -> None:
    b = make_batch(repo, 2)
    d = daemon(repo)
    cancelled = repo.cancel_batch("alice", b, now=T0)
    assert cancelled.status is BatchStatus.CANCELLED
    assert claim_by_model(repo, d, {"m1": 2}, now=T0) == []
    again = repo.retry_batch("alice", b, now=T0)  # nothing failed: no-op
    assert again.status is BatchStatus.CANCELLED
    assert again.record.version == cancelled.record.version


def test_retry_after_the_deadline_moves_every_unsettled_row(repo: PostgresRepository) -> None:
    b = make_batch(repo, 3)
    d = daemon(repo)
    c = claim_by_model(repo, d, {"m1": 1}, now=T0)
    bad = Failure(FailureReason.HTTP_STATUS, "500", 500, "oops")
    repo.record_results(d, [c[0].result(ResultKind.FAILED, T0, 500, "oops", bad)])
    late = T0 + timedelta(hours=24, seconds=1)  # past the deadline, before any sweep
    view = repo.retry_batch("alice", b, now=late)
    assert view.record.expires_at == late + timedelta(hours=24)
    # the retried row and the two never-claimed ones are all claimable again
    assert len(claim_by_model(repo, d, {"m1": 5}, now=late)) == 3


def test_ids_sort_in_creation_order_within_one_millisecond(repo: PostgresRepository) -> None:
    ids = [repo.create_file("alice", f"{i}", templates(1), now=T0).id for i in range(50)]
    assert ids == sorted(ids)


def test_a_large_file_is_not_cut_off_by_the_statement_timeout(database_url: str) -> None:
    """A million-line COPY outlasts the 30 s every other statement gets; ingest lifts it."""
    with PostgresRepository(database_url, statement_timeout_ms=1) as repo:
        f = repo.create_file("alice", "big.jsonl", templates(20_000), now=T0)
    assert f.line_count == 20_000


def test_record_results_writes_what_the_core_computed(
    repo: PostgresRepository, database_url: str
) -> None:
    """record_results.sql decides nothing: it stores the state and fields it is given.
    Here the computed values are ones the statement's old rules would have changed: a
    retry due before its attempt ended (it clamped not_before to finished_at) and a
    success finished at another time than its attempt's end (it wrote finished_at)."""
    make_batch(repo, 2)
    d = daemon(repo)
    retry_c, ok_c = claim_by_model(repo, d, {"m1": 2}, now=T0)
    t1 = T0 + timedelta(seconds=10)
    retry = retry_c.result(ResultKind.RETRY, t1, 503, "busy", Failure(FailureReason.TIMEOUT, "t"))
    early = T0 - timedelta(hours=1)
    retry = attrs.evolve(retry, request=attrs.evolve(retry.request, not_before=early))
    success = ok(ok_c, t1)
    stamped = t1 + timedelta(seconds=5)
    success = attrs.evolve(success, request=attrs.evolve(success.request, finished_at=stamped))
    assert repo.record_results(d, [retry, success]).written == 2
    with psycopg.connect(database_url) as conn:
        query = "SELECT id, state, not_before, finished_at, daemon_id FROM requests"
        rows = {r[0]: r[1:] for r in conn.execute(query).fetchall()}
    assert rows[retry_c.id] == ("pending", early, None, None)
    assert rows[ok_c.id] == ("completed", ok_c.not_before, stamped, d)


def test_the_fence_refuses_a_stale_write_of_the_same_daemon(repo: PostgresRepository) -> None:
    """Released and claimed again by the same daemon: the first attempt's result finds the
    row under another attempt and is refused (a lost race), whatever the core computed."""
    b = make_batch(repo, 1)
    d = daemon(repo)
    (first,) = claim_by_model(repo, d, {"m1": 1}, now=T0)
    assert repo.release(d, now=T0) == 1
    (second,) = claim_by_model(repo, d, {"m1": 1}, now=T0)
    assert (second.id, second.attempt) == (first.id, 2)
    stale = repo.record_results(d, [ok(first)])
    assert stale.written == 0 and stale.lost == (first.id,)
    assert repo.get_batch("alice", b, now=T0).counts.in_progress == 1
    assert repo.record_results(d, [ok(second)]).written == 1


@pytest.mark.parametrize("page_size", [1, 2, 5000])
def test_results_by_line_come_in_input_order_whatever_the_completion_order(
    repo: PostgresRepository, page_size: int
) -> None:
    """``run --ordered``'s read: output and error lines together in line order, though
    they ended in the reverse order; a request not finished yet is left out."""
    b = make_batch(repo, 7)
    d = daemon(repo)
    claimed = claim_by_model(repo, d, {"m1": 6}, now=T0)  # line 7 stays pending
    bad = Failure(FailureReason.HTTP_STATUS, "400", 400, "no")
    for age, c in enumerate(reversed(claimed)):  # line 6 ends first, line 1 last
        at = T0 + timedelta(seconds=age)
        failed = c.custom_id in ("req-1", "req-4")
        result = c.result(ResultKind.FAILED, at, 400, "no", bad) if failed else ok(c, at)
        repo.record_results(d, [result])
    ended = [line.custom_id for line in repo.iter_results("alice", b, errors=False)]
    assert ended == ["req-5", "req-3", "req-2", "req-0"]  # the premise: completion order
    lines = list(repo.iter_results_by_line("alice", b, page_size=page_size))
    assert [(line.custom_id, line.state) for line in lines] == [
        ("req-0", RequestState.COMPLETED),
        ("req-1", RequestState.FAILED),
        ("req-2", RequestState.COMPLETED),
        ("req-3", RequestState.COMPLETED),
        ("req-4", RequestState.FAILED),
        ("req-5", RequestState.COMPLETED),
    ]
    with pytest.raises(NotFound):
        list(repo.iter_results_by_line("bob", b))
