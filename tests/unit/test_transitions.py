"""The state table: totality, absorption, guards, effects, and random event sequences."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import attrs
import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from fusillade.core.models import Failure, FailureReason, Request, RequestState
from fusillade.core.transitions import (
    TRANSITIONS,
    Effect,
    Event,
    EventKind,
    StepResult,
    render_markdown,
    step,
)
from fusillade.errors import IllegalTransition

NOW = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
DAEMON = uuid.UUID(int=7)
FAILURE = Failure(FailureReason.HTTP_STATUS, "boom", status=500, body="{}")
REPO = Path(__file__).resolve().parents[2]


def make_request(state: RequestState, *, sent: bool = True, attempts: int = 3) -> Request:
    """A request in ``state``; ``sent`` sets ``started_at`` so the ``was_sent`` guard holds."""
    in_flight = state.is_in_flight or state is RequestState.CANCELED
    return Request(
        id=uuid.UUID(int=1),
        batch_id=uuid.UUID(int=2),
        state=state,
        not_before=NOW - timedelta(seconds=5),
        attempts=attempts,
        budget_base=1,
        daemon_id=DAEMON if in_flight else None,
        claimed_at=NOW - timedelta(seconds=2) if in_flight else None,
        started_at=NOW - timedelta(seconds=1) if sent else None,
    )


def make_event(kind: EventKind, request: Request) -> Event:
    return Event(
        kind,
        daemon_id=DAEMON,
        attempt=request.attempts,
        not_before=NOW + timedelta(seconds=10),
        status=200,
        body='{"ok": true}',
        failure=FAILURE,
    )


ALL_PAIRS = [(s, k) for s in RequestState for k in EventKind]


@pytest.mark.parametrize(("state", "kind"), ALL_PAIRS)
def test_table_is_total(state: RequestState, kind: EventKind) -> None:
    """Every (state, event) pair either moves to the table's target or is illegal."""
    request = make_request(state)
    rule_ = TRANSITIONS.get((state, kind))
    if rule_ is None:
        with pytest.raises(IllegalTransition) as info:
            step(request, make_event(kind, request), NOW)
        assert info.value.state is state
        assert info.value.event is kind
    else:
        result = step(request, make_event(kind, request), NOW)
        assert isinstance(result, StepResult)
        assert result.request.state is rule_.target
        assert result.request.state in RequestState


def test_table_only_names_known_states_and_events() -> None:
    for (state, kind), rule_ in TRANSITIONS.items():
        assert state in RequestState
        assert kind in EventKind
        assert rule_.target in RequestState
        assert rule_.note


@pytest.mark.parametrize("kind", list(EventKind))
def test_completed_refuses_everything(kind: EventKind) -> None:
    request = make_request(RequestState.COMPLETED)
    with pytest.raises(IllegalTransition):
        step(request, make_event(kind, request), NOW)


def test_terminal_states_have_only_the_listed_exits() -> None:
    exits = {
        state: {kind for (src, kind) in TRANSITIONS if src is state}
        for state in (RequestState.COMPLETED, RequestState.FAILED, RequestState.CANCELED)
    }
    assert exits == {
        RequestState.COMPLETED: set(),
        RequestState.FAILED: {EventKind.MANUAL_RETRY},
        RequestState.CANCELED: {EventKind.MANUAL_RETRY, EventKind.SUCCEED},
    }


def test_late_success_after_cancel_needs_a_sent_attempt() -> None:
    unsent = make_request(RequestState.CANCELED, sent=False)
    with pytest.raises(IllegalTransition):
        step(unsent, make_event(EventKind.SUCCEED, unsent), NOW)

    sent = make_request(RequestState.CANCELED, sent=True)
    stale = attrs.evolve(make_event(EventKind.SUCCEED, sent), attempt=sent.attempts - 1)
    with pytest.raises(IllegalTransition):
        step(sent, stale, NOW)

    result = step(sent, make_event(EventKind.SUCCEED, sent), NOW)
    assert result.request.state is RequestState.COMPLETED
    assert result.request.failure is None
    assert result.request.response_status == 200
    assert result.effects == ()


def test_start_sends() -> None:
    request = make_request(RequestState.CLAIMED, sent=False)
    result = step(request, make_event(EventKind.START, request), NOW)
    assert result.effects == (Effect.SEND,)
    assert result.request.started_at == NOW


@pytest.mark.parametrize(
    "kind", [EventKind.CANCEL, EventKind.EXPIRE, EventKind.RELEASE, EventKind.RECLAIM]
)
def test_leaving_processing_aborts(kind: EventKind) -> None:
    processing = make_request(RequestState.PROCESSING)
    assert step(processing, make_event(kind, processing), NOW).effects == (Effect.ABORT,)
    # Nothing is in flight before the start, so there is nothing to abort.
    claimed = make_request(RequestState.CLAIMED, sent=False)
    assert step(claimed, make_event(kind, claimed), NOW).effects == ()


@pytest.mark.parametrize(("state", "kind"), list(TRANSITIONS))
def test_only_start_and_aborting_exits_have_effects(state: RequestState, kind: EventKind) -> None:
    request = make_request(state)
    effects = step(request, make_event(kind, request), NOW).effects
    if kind is EventKind.START:
        assert effects == (Effect.SEND,)
    elif state is RequestState.PROCESSING and kind in {
        EventKind.CANCEL,
        EventKind.EXPIRE,
        EventKind.RELEASE,
        EventKind.RECLAIM,
    }:
        assert effects == (Effect.ABORT,)
    else:
        assert effects == ()


def test_cancel_and_expire_record_their_reason() -> None:
    request = make_request(RequestState.PENDING)
    canceled = step(request, make_event(EventKind.CANCEL, request), NOW).request
    expired = step(request, make_event(EventKind.EXPIRE, request), NOW).request
    assert canceled.failure is not None
    assert canceled.failure.reason is FailureReason.CANCELLED
    assert expired.failure is not None
    assert expired.failure.reason is FailureReason.EXPIRED


def test_retry_never_schedules_before_now() -> None:
    request = make_request(RequestState.PROCESSING)
    early = attrs.evolve(make_event(EventKind.RETRY, request), not_before=NOW - timedelta(hours=1))
    assert step(request, early, NOW).request.not_before == NOW
    missing = attrs.evolve(make_event(EventKind.RETRY, request), not_before=None)
    assert step(request, missing, NOW).request.not_before == NOW


def test_release_refunds_and_reclaim_keeps_the_attempt() -> None:
    request = make_request(RequestState.PROCESSING)
    released = step(request, make_event(EventKind.RELEASE, request), NOW).request
    reclaimed = step(request, make_event(EventKind.RECLAIM, request), NOW).request
    assert released.attempts == reclaimed.attempts == request.attempts
    assert released.budget_used == request.budget_used - 1
    assert reclaimed.budget_used == request.budget_used


def test_manual_retry_resets_the_budget_not_the_attempts() -> None:
    request = make_request(RequestState.FAILED)
    retried = step(request, make_event(EventKind.MANUAL_RETRY, request), NOW).request
    assert retried.state is RequestState.PENDING
    assert retried.attempts == request.attempts
    assert retried.budget_used == 0
    assert retried.failure is None


def test_state_machine_doc_is_current() -> None:
    doc = REPO / "docs" / "state-machine.md"
    assert doc.read_text(encoding="utf-8") == render_markdown(), (
        "regenerate: python -m fusillade.core.transitions > docs/state-machine.md"
    )


# ---------------------------------------------------------------------- stateful test


@attrs.define
class NaiveModel:
    """What the table says should happen, tracked without ``step``."""

    state: RequestState = RequestState.PENDING
    attempts: int = 0
    budget_used: int = 0
    sent_attempt: int | None = None  # the attempt whose HTTP call was started, if any


class RequestMachine(RuleBasedStateMachine):
    """Random event sequences, legal or not, against one request and a naive model."""

    def __init__(self) -> None:
        super().__init__()
        self.now = NOW
        self.request = Request(
            id=uuid.uuid4(), batch_id=uuid.uuid4(), state=RequestState.PENDING, not_before=NOW
        )
        self.model = NaiveModel()
        self.max_attempts_seen = 0

    @rule(advance=st.integers(min_value=0, max_value=3_600))
    def tick(self, advance: int) -> None:
        self.now += timedelta(seconds=advance)

    @rule(
        kind=st.sampled_from(EventKind),
        delay=st.integers(min_value=-600, max_value=600),
        stale=st.booleans(),
    )
    def apply(self, kind: EventKind, delay: int, stale: bool) -> None:
        before = self.request
        attempt = before.attempts - 1 if stale else before.attempts
        event = Event(
            kind,
            daemon_id=DAEMON,
            attempt=attempt,
            not_before=self.now + timedelta(seconds=delay),
            status=200,
            body="{}",
            failure=FAILURE,
        )
        legal = self._legal(kind, attempt)
        if not legal:
            with pytest.raises(IllegalTransition):
                step(before, event, self.now)
            return
        result = step(before, event, self.now)
        self.request = result.request
        self._advance_model(kind)
        assert self.request.state is self.model.state
        if kind in {EventKind.RETRY, EventKind.RELEASE, EventKind.RECLAIM}:
            assert self.request.not_before >= self.now
        if kind is EventKind.RETRY:
            assert self.request.not_before == max(self.now, event.not_before or self.now)

    def _legal(self, kind: EventKind, attempt: int) -> bool:
        rule_ = TRANSITIONS.get((self.model.state, kind))
        if rule_ is None:
            return False
        if rule_.guard == "was_sent":
            return self.model.sent_attempt is not None and self.model.sent_attempt == attempt
        return True

    def _advance_model(self, kind: EventKind) -> None:
        m = self.model
        m.state = TRANSITIONS[(m.state, kind)].target
        if kind is EventKind.CLAIM:
            m.attempts += 1
            m.budget_used += 1
        elif kind is EventKind.START:
            m.sent_attempt = m.attempts
        elif kind is EventKind.RELEASE:
            m.budget_used -= 1
            m.sent_attempt = None
        elif kind in {EventKind.RECLAIM, EventKind.RETRY}:
            m.sent_attempt = None
        elif kind is EventKind.MANUAL_RETRY:
            m.budget_used = 0
            m.sent_attempt = None

    @precondition(lambda self: self.request.state is RequestState.PENDING)
    @rule()
    def claim_when_due(self) -> None:
        # Drives the happy path more often than random kinds alone would.
        self.now = max(self.now, self.request.not_before)
        self.request = step(
            self.request, Event(EventKind.CLAIM, daemon_id=DAEMON), self.now
        ).request
        self._advance_model(EventKind.CLAIM)

    @invariant()
    def matches_model(self) -> None:
        r, m = self.request, self.model
        assert r.state is m.state
        assert r.attempts == m.attempts
        assert r.budget_used == m.budget_used

    @invariant()
    def attempts_never_decrease(self) -> None:
        assert self.request.attempts >= self.max_attempts_seen
        self.max_attempts_seen = self.request.attempts

    @invariant()
    def budget_is_sane(self) -> None:
        assert 0 <= self.request.budget_used <= self.request.attempts

    @invariant()
    def fields_fit_the_state(self) -> None:
        r = self.request
        if r.state.is_in_flight:
            assert r.daemon_id is not None
            assert r.claimed_at is not None
        if r.state is RequestState.PENDING:
            assert r.daemon_id is None
            assert r.started_at is None
            assert r.finished_at is None
        if r.state is RequestState.PROCESSING:
            assert r.started_at is not None
        if r.state.is_terminal:
            assert r.finished_at is not None
        if r.state is RequestState.COMPLETED:
            assert r.failure is None
            assert r.response_status is not None
        if r.state in {RequestState.FAILED, RequestState.CANCELED}:
            assert r.failure is not None
        if r.state is RequestState.CANCELED:
            assert r.failure is not None
            assert r.failure.reason in {FailureReason.CANCELLED, FailureReason.EXPIRED}


TestRequestMachine = RequestMachine.TestCase
