from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import attrs
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from fusillade.core.batches import count_states, derive, freeze, needs_freeze, recount_consistent
from fusillade.core.models import (
    BatchRecord,
    BatchStatus,
    BatchView,
    Failure,
    FailureReason,
    Request,
    RequestCounts,
    RequestState,
)
from fusillade.core.transitions import Event, EventKind, step

T0 = datetime(2026, 1, 1, tzinfo=UTC)
WINDOW = timedelta(hours=24)


def s(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def record(total: int = 3, **changes: object) -> BatchRecord:
    base = BatchRecord(
        id=UUID(int=1),
        owner="alice",
        input_file_id=UUID(int=2),
        output_file_id=UUID(int=3),
        error_file_id=UUID(int=4),
        endpoint="/v1/chat/completions",
        completion_window="24h",
        created_at=T0,
        expires_at=T0 + WINDOW,
        total=total,
    )
    return attrs.evolve(base, **changes)  # type: ignore[arg-type]  # test-only kwargs


def counts(
    pending: int = 0, in_progress: int = 0, completed: int = 0, failed: int = 0, canceled: int = 0
) -> RequestCounts:
    total = pending + in_progress + completed + failed + canceled
    return RequestCounts(total, pending, in_progress, completed, failed, canceled)


def frozen(c: RequestCounts, last: datetime, **changes: object) -> BatchRecord:
    return freeze(record(c.total, **changes), c, last)


# --- one example per rule -----------------------------------------------------------


def test_in_progress() -> None:
    view = derive(record(), counts(pending=2, completed=1), s(10))
    assert view.status is BatchStatus.IN_PROGRESS
    assert view.in_progress_at == T0
    assert (view.completed_at, view.finalizing_at, view.cancelled_at) == (None, None, None)
    assert view.has_output
    assert not view.has_errors


def test_settled_but_not_frozen_is_finalizing() -> None:
    view = derive(record(), counts(completed=3), s(10))
    assert view.status is BatchStatus.FINALIZING
    assert view.finalizing_at is None
    assert needs_freeze(view)


def test_frozen_is_completed_at_last_finish() -> None:
    c = counts(completed=2, failed=1)
    view = derive(frozen(c, s(50)), counts(), s(60))  # live counts are ignored
    assert view.status is BatchStatus.COMPLETED
    assert view.completed_at == view.finalizing_at == s(50)
    assert view.counts == c
    assert view.has_output
    assert view.has_errors
    assert not needs_freeze(view)


def test_every_line_failed_has_no_output_file() -> None:
    view = derive(frozen(counts(failed=3), s(5)), counts(), s(6))
    assert view.status is BatchStatus.COMPLETED
    assert not view.has_output
    assert view.has_errors


def test_completed_in_time_stays_completed_after_deadline() -> None:
    view = derive(frozen(counts(completed=3), s(5)), counts(), T0 + 2 * WINDOW)
    assert view.status is BatchStatus.COMPLETED


def test_cancelling_until_frozen() -> None:
    r = record(cancelling_at=s(10))
    assert derive(r, counts(in_progress=1, canceled=2), s(11)).status is BatchStatus.CANCELLING
    view = derive(r, counts(completed=1, canceled=2), s(12))
    assert view.status is BatchStatus.CANCELLING
    assert view.cancelling_at == s(10)
    assert view.cancelled_at is None
    assert needs_freeze(view)


def test_cancelled_at_is_last_settlement() -> None:
    c = counts(completed=1, canceled=2)
    view = derive(frozen(c, s(12), cancelling_at=s(10)), counts(), s(20))
    assert view.status is BatchStatus.CANCELLED
    assert (view.cancelling_at, view.cancelled_at) == (s(10), s(12))
    assert view.in_progress_at == T0


def test_cancelled_at_never_before_cancelling_at() -> None:
    # Clocks of two hosts may disagree: the last result may carry an earlier time.
    view = derive(frozen(counts(canceled=3), s(9), cancelling_at=s(10)), counts(), s(20))
    assert view.cancelled_at == s(10)


def test_cancelled_without_a_last_finish_is_cancelled_at_the_cancel() -> None:
    # derive never raises on an odd row: frozen counts without a last finish time.
    r = freeze(record(cancelling_at=s(10)), counts(canceled=3), None)
    view = derive(r, counts(), s(20))
    assert (view.status, view.cancelled_at) == (BatchStatus.CANCELLED, s(10))


def test_cancel_wins_over_a_later_deadline() -> None:
    r = record(cancelling_at=s(10))
    assert derive(r, counts(pending=3), T0 + 2 * WINDOW).status is BatchStatus.CANCELLING


def test_cancel_after_the_deadline_is_too_late() -> None:
    r = record(cancelling_at=T0 + WINDOW + timedelta(seconds=1))
    view = derive(r, counts(pending=3), T0 + WINDOW + timedelta(seconds=2))
    assert view.status is BatchStatus.FINALIZING  # the expiry is being applied
    assert view.cancelling_at is None
    done = derive(
        frozen(counts(canceled=3), T0 + WINDOW, cancelling_at=r.cancelling_at),
        counts(),
        T0 + 2 * WINDOW,
    )
    assert done.status is BatchStatus.EXPIRED
    assert done.expired_at == T0 + WINDOW


def test_cancel_exactly_at_the_deadline_is_too_late() -> None:
    deadline = T0 + WINDOW
    at = derive(record(cancelling_at=deadline), counts(pending=3), deadline)
    assert at.status is BatchStatus.FINALIZING
    assert at.cancelling_at is None
    frozen_at = frozen(counts(canceled=3), deadline, cancelling_at=deadline, expired_at=deadline)
    done = derive(frozen_at, counts(), deadline + timedelta(seconds=1))
    assert (done.status, done.expired_at, done.cancelled_at) == (
        BatchStatus.EXPIRED,
        deadline,
        None,
    )
    # One microsecond earlier the cancel counts.
    just_before = deadline - timedelta(microseconds=1)
    before = derive(record(cancelling_at=just_before), counts(pending=3), just_before)
    assert (before.status, before.cancelling_at) == (BatchStatus.CANCELLING, just_before)


def test_work_ending_exactly_at_the_deadline_is_expired() -> None:
    deadline = T0 + WINDOW
    view = derive(frozen(counts(completed=3), deadline), counts(), deadline)
    assert (view.status, view.expired_at, view.completed_at) == (
        BatchStatus.EXPIRED,
        deadline,
        None,
    )
    early = deadline - timedelta(microseconds=1)
    view = derive(frozen(counts(completed=3), early), counts(), deadline)
    assert (view.status, view.completed_at) == (BatchStatus.COMPLETED, early)


def test_past_the_deadline_before_the_sweep_is_finalizing() -> None:
    """Terminal only once the counts stop moving: a client seeing expired gets final files."""
    view = derive(record(), counts(pending=1, completed=2), T0 + WINDOW)
    assert view.status is BatchStatus.FINALIZING
    assert view.expired_at is None
    assert not needs_freeze(view)  # the sweep settles the rest first


def test_not_expired_just_before_the_deadline() -> None:
    view = derive(record(), counts(pending=1), T0 + WINDOW - timedelta(microseconds=1))
    assert view.status is BatchStatus.IN_PROGRESS


def test_expired_stamp() -> None:
    r = record(expired_at=T0 + WINDOW)
    view = derive(r, counts(completed=1, canceled=2), T0 + WINDOW + timedelta(hours=1))
    assert view.status is BatchStatus.FINALIZING
    assert needs_freeze(view)
    last = T0 + WINDOW - timedelta(seconds=1)
    done = derive(
        frozen(counts(completed=1, canceled=2), last, expired_at=r.expired_at),
        counts(),
        T0 + 2 * WINDOW,
    )
    assert done.status is BatchStatus.EXPIRED
    assert done.expired_at == T0 + WINDOW


def test_work_ending_after_the_deadline_is_expired() -> None:
    late = T0 + WINDOW + timedelta(seconds=3)
    view = derive(frozen(counts(completed=3), late), counts(), late)
    assert view.status is BatchStatus.EXPIRED
    assert view.expired_at == T0 + WINDOW
    assert view.completed_at is None


def test_empty_batch_is_failed() -> None:
    view = derive(record(total=0), counts(), s(1))
    assert view.status is BatchStatus.FAILED
    assert view.failed_at == T0
    assert view.in_progress_at is None
    assert not view.has_output
    assert not view.has_errors


def test_derive_tolerates_inconsistent_counts() -> None:
    view = derive(record(total=3), RequestCounts(3, -1, 0, 0, 0, 0), s(1))
    assert view.status is BatchStatus.FINALIZING
    assert not needs_freeze(view)


def test_freeze_refuses_unsettled_or_inconsistent_counts() -> None:
    with pytest.raises(ValueError, match="cannot freeze"):
        freeze(record(), counts(pending=1, completed=2), None)
    with pytest.raises(ValueError, match="cannot freeze"):
        freeze(record(total=4), counts(completed=3), None)


def test_count_states_and_consistency() -> None:
    c = count_states(
        [RequestState.PENDING, RequestState.CLAIMED, RequestState.PROCESSING]
        + [RequestState.COMPLETED, RequestState.FAILED, RequestState.CANCELED] * 2
    )
    assert c == RequestCounts(9, 1, 2, 2, 2, 2)
    assert recount_consistent(record(total=9), c)
    assert not recount_consistent(record(total=8), c)


# --- stateful: a naive model of the store drives random histories -------------------

TERMINAL = {BatchStatus.COMPLETED, BatchStatus.CANCELLED, BatchStatus.EXPIRED}


def _stamps(view: BatchView) -> tuple[object, ...]:
    return (
        view.status,
        view.in_progress_at,
        view.finalizing_at,
        view.completed_at,
        view.failed_at,
        view.expired_at,
        view.cancelling_at,
        view.cancelled_at,
    )


SLOT = st.integers(0, 7)
EXPIRES = s(60)
P = RequestState.PENDING


class BatchModel(RuleBasedStateMachine):
    """Requests move through ``transitions.step``; the batch row changes as the SQL does."""

    def __init__(self) -> None:
        super().__init__()
        self.now = T0
        self.daemon = uuid4()
        self.requests: list[Request] = []
        self.batch = record()
        self.prev: BatchView | None = None

    @initialize(n=st.integers(1, 6))
    def create(self, n: int) -> None:
        self.batch = record(total=n, expires_at=EXPIRES)
        self.requests = [
            Request(UUID(int=i + 10), self.batch.id, RequestState.PENDING, not_before=T0)
            for i in range(n)
        ]

    # helpers

    def _live(self) -> RequestCounts:
        return count_states(r.state for r in self.requests)

    def _view(self) -> BatchView:
        return derive(self.batch, self._live(), self.now)

    def _pick(self, i: int, *states: RequestState) -> int | None:
        index = i % len(self.requests)
        return index if self.requests[index].state in states else None

    def _apply(self, index: int, event: Event) -> None:
        self.requests[index] = step(self.requests[index], event, self.now).request

    def _active(self) -> bool:
        b = self.batch
        return b.cancelling_at is None and b.expired_at is None and self.now < b.expires_at

    # time and the daemon

    @rule(seconds=st.integers(0, 40))
    def tick(self, seconds: int) -> None:
        self.now += timedelta(seconds=seconds)

    @rule(i=SLOT)
    def claim_and_start(self, i: int) -> None:
        index = self._pick(i, RequestState.PENDING)
        if index is None or not self._active() or self.requests[index].not_before > self.now:
            return
        self._apply(index, Event(EventKind.CLAIM, daemon_id=self.daemon))
        self._apply(index, Event(EventKind.START))

    @rule(i=SLOT, outcome=st.sampled_from(["succeed", "retry", "fail", "reclaim", "release"]))
    def result(self, i: int, outcome: str) -> None:
        index = self._pick(i, RequestState.PROCESSING)
        if index is None:
            return
        attempt = self.requests[index].attempts
        failure = Failure(FailureReason.HTTP_STATUS, "boom", 500, "{}")
        later = self.now + timedelta(seconds=5)
        events = {
            "succeed": Event(EventKind.SUCCEED, attempt=attempt, status=200, body="{}"),
            "retry": Event(EventKind.RETRY, attempt=attempt, not_before=later, failure=failure),
            "fail": Event(EventKind.FAIL, attempt=attempt, failure=failure),
            "reclaim": Event(EventKind.RECLAIM),
            "release": Event(EventKind.RELEASE),
        }
        self._apply(index, events[outcome])

    @rule(i=SLOT)
    def late_success(self, i: int) -> None:
        # record_results.sql: a billed result replaces canceled, repairing frozen counts.
        index = self._pick(i, RequestState.CANCELED)
        if index is None or self.requests[index].started_at is None:
            return
        attempt = self.requests[index].attempts
        self._apply(index, Event(EventKind.SUCCEED, attempt=attempt, status=200, body="{}"))
        c = self.batch.frozen_counts
        if c is not None:
            repaired = attrs.evolve(c, completed=c.completed + 1, canceled=c.canceled - 1)
            self.batch = attrs.evolve(self.batch, frozen_counts=repaired)

    # the store's batch statements

    @rule()
    def cancel_batch(self) -> None:
        b = self.batch
        if (
            b.cancelling_at is None
            and b.expired_at is None
            and b.frozen_counts is None
            and self._live().unsettled > 0
        ):
            self.batch = attrs.evolve(b, cancelling_at=self.now)

    @rule()
    def expire_batches(self) -> None:
        b = self.batch
        if (
            b.frozen_counts is None
            and b.cancelling_at is None
            and b.expired_at is None
            and b.expires_at <= self.now
            and self._live().unsettled > 0
        ):
            self.batch = attrs.evolve(b, expired_at=b.expires_at)

    @rule(in_flight=st.booleans())
    def sweep_or_abort(self, in_flight: bool) -> None:
        # sweep_cancelled / expire_requests settle the pending rows; the daemons abort
        # the rows in flight.
        b = self.batch
        if b.frozen_counts is not None:
            return
        kind = EventKind.CANCEL if b.cancelling_at is not None else EventKind.EXPIRE
        if b.cancelling_at is None and b.expired_at is None:
            return
        states = (RequestState.CLAIMED, RequestState.PROCESSING) if in_flight else (P,)
        for index, r in enumerate(self.requests):
            if r.state in states:
                self._apply(index, Event(kind))

    @rule()
    def freeze_batch(self) -> None:
        if needs_freeze(self._view()):
            finished = [r.finished_at for r in self.requests if r.finished_at is not None]
            self.batch = freeze(self.batch, self._live(), max(finished, default=None))

    @rule(include_cancelled=st.booleans())
    def retry_batch(self, include_cancelled: bool) -> None:
        b = self.batch
        expires_at = b.expires_at
        if b.expired_at is not None or b.expires_at <= self.now:
            expires_at = self.now + timedelta(seconds=100)
        self.batch = attrs.evolve(
            b,
            version=b.version + 1,
            frozen_counts=None,
            last_finished_at=None,
            cancelling_at=None,
            expired_at=None,
            expires_at=expires_at,
        )
        retried = {RequestState.FAILED} | ({RequestState.CANCELED} if include_cancelled else set())
        for index, r in enumerate(self.requests):
            if r.state in retried:
                self._apply(index, Event(EventKind.MANUAL_RETRY))
        self.prev = None  # a retry may change a terminal status

    # invariants

    @invariant()
    def counts_sum_to_total(self) -> None:
        live = self._live()
        assert live.is_consistent
        assert recount_consistent(self.batch, live)
        if self.batch.frozen_counts is not None:
            assert self.batch.frozen_counts == live  # frozen counts are never stale
            assert live.unsettled == 0

    @invariant()
    def status_agrees_with_counts(self) -> None:
        view = self._view()
        b, c = self.batch, view.counts
        status = view.status
        assert status not in (BatchStatus.VALIDATING, BatchStatus.FAILED)
        if status in (BatchStatus.COMPLETED, BatchStatus.CANCELLED):
            assert b.frozen_counts is not None
            assert c.unsettled == 0
        if status is BatchStatus.COMPLETED:
            assert view.completed_at is not None
            assert view.completed_at < b.expires_at
        if status is BatchStatus.CANCELLED:
            assert view.cancelled_at is not None
            assert b.cancelling_at is not None
            assert view.cancelled_at >= b.cancelling_at
        if status is BatchStatus.CANCELLING:
            assert b.cancelling_at is not None
            assert b.frozen_counts is None
        if status is BatchStatus.FINALIZING:
            assert c.unsettled == 0 or self.now >= b.expires_at
            assert b.frozen_counts is None
        if status is BatchStatus.IN_PROGRESS:
            assert c.unsettled > 0
            assert self.now < b.expires_at
        if status is BatchStatus.EXPIRED:
            assert self.now >= b.expires_at
            assert b.frozen_counts is not None
            assert c.unsettled == 0
            assert view.expired_at == b.expires_at
        assert view.has_output == (c.completed > 0)
        assert view.has_errors == (c.failed + c.canceled > 0)

    @invariant()
    def terminal_status_is_stable(self) -> None:
        view = self._view()
        prev, self.prev = self.prev, view
        if prev is None or prev.status not in TERMINAL:
            return
        # Terminal statuses are all frozen: status and timestamps never move again.
        assert prev.record.frozen_counts is not None
        assert _stamps(view) == _stamps(prev)


TestBatchModel = BatchModel.TestCase
TestBatchModel.settings = settings(max_examples=300, stateful_step_count=60, deadline=None)
