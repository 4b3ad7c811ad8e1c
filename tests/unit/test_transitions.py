"""The state table: totality, absorption, guards, effects, and random event sequences."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import attrs
import pytest
from hypothesis import event
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
    was_sent,
)
from fusillade.errors import IllegalTransition

NOW = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
DAEMON = uuid.UUID(int=7)
FAILURE = Failure(FailureReason.HTTP_STATUS, "boom", status=500, body="{}")
REPO = Path(__file__).resolve().parents[2]

P = RequestState.PENDING
CL = RequestState.CLAIMED
PR = RequestState.PROCESSING
CO = RequestState.COMPLETED
FA = RequestState.FAILED
CA = RequestState.CANCELED
E = EventKind

# engine.md section 1, written out by hand: (state, event) -> the state that follows.
# Every pair not listed is illegal. Deliberately not read from ``TRANSITIONS``: a wrong
# row in the table (and the doc regenerated from it) must fail these tests, not change
# what they expect. The only guarded row is the late success, legal only for the attempt
# that was sent (see test_late_success_after_cancel_needs_a_sent_attempt).
SPEC: dict[tuple[RequestState, EventKind], RequestState] = {
    (P, E.CLAIM): CL,
    (CL, E.START): PR,
    (CL, E.RECLAIM): P,
    (PR, E.RECLAIM): P,
    (CL, E.RELEASE): P,
    (PR, E.RELEASE): P,
    (PR, E.SUCCEED): CO,
    (PR, E.RETRY): P,
    (PR, E.FAIL): FA,
    (P, E.CANCEL): CA,
    (CL, E.CANCEL): CA,
    (PR, E.CANCEL): CA,
    (P, E.EXPIRE): CA,
    (CL, E.EXPIRE): CA,
    (PR, E.EXPIRE): CA,
    (CA, E.SUCCEED): CO,
    (FA, E.MANUAL_RETRY): P,
    (CA, E.MANUAL_RETRY): P,
}
# Leaving processing any other way than by a result aborts the HTTP call in flight.
SPEC_ABORTS = {(PR, E.CANCEL), (PR, E.EXPIRE), (PR, E.RELEASE), (PR, E.RECLAIM)}


def make_request(state: RequestState, *, sent: bool = True, attempts: int = 3) -> Request:
    """A request in ``state`` with every field its state implies.

    ``sent`` sets ``started_at`` (so the ``was_sent`` guard holds); a terminal request has
    a ``finished_at``, a completed one its response, a failed or canceled one a failure,
    and a failed one also the upstream's answer (as ``record_results.sql`` stores it).
    """
    in_flight = state in (RequestState.CLAIMED, RequestState.PROCESSING, RequestState.CANCELED)
    failure = {FA: FAILURE, CA: Failure(FailureReason.CANCELLED, "batch cancelled")}
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
        finished_at=NOW - timedelta(seconds=1) if state.is_terminal else None,
        response_status={CO: 200, FA: 500}.get(state),
        response_body="{}" if state in (CO, FA) else None,
        failure=failure.get(state),
    )


def make_event(kind: EventKind, request: Request) -> Event:
    return Event(
        kind,
        daemon_id=OTHER_DAEMON,
        attempt=request.attempts,
        not_before=NOW + timedelta(seconds=10),
        status=200,
        body='{"ok": true}',
        failure=FAILURE,
    )


OTHER_DAEMON = uuid.UUID(int=8)
ALL_PAIRS = [(s, k) for s in RequestState for k in EventKind]


@pytest.mark.parametrize(("state", "kind"), ALL_PAIRS)
def test_step_follows_the_spec_table(state: RequestState, kind: EventKind) -> None:
    """Total: every (state, event) pair moves to the spec's target or is illegal."""
    request = make_request(state)
    target = SPEC.get((state, kind))
    if target is None:
        with pytest.raises(IllegalTransition) as info:
            step(request, make_event(kind, request), NOW)
        assert info.value.state is state
        assert info.value.event is kind
    else:
        result = step(request, make_event(kind, request), NOW)
        assert isinstance(result, StepResult)
        assert result.request.state is target


def test_table_rows_are_the_spec_rows() -> None:
    """The data the docs are generated from says what the spec says, row for row."""
    assert {pair: rule_.target for pair, rule_ in TRANSITIONS.items()} == SPEC
    guarded = {pair: rule_.guard for pair, rule_ in TRANSITIONS.items() if rule_.guard}
    assert guarded == {(CA, E.SUCCEED): was_sent}


_CLEARED_OWNER = {"daemon_id": None, "claimed_at": None, "started_at": None}
_CANCELLED = Failure(FailureReason.CANCELLED, "batch cancelled")
_EXPIRED = Failure(FailureReason.EXPIRED, "batch expired")
_SUCCEEDED = {
    "state": CO,
    "finished_at": NOW,
    "response_status": 200,
    "response_body": '{"ok": true}',
    "failure": None,
}
_MANUAL_RETRY = {
    "state": P,
    **_CLEARED_OWNER,
    "finished_at": None,
    "not_before": NOW,
    "response_status": None,
    "response_body": None,
    "failure": None,
    "budget_base": 3,  # = attempts: the budget starts again
}
# Every field each transition changes, written out from engine.md (the request from
# ``make_request``: attempts 3, budget_base 1; the event from ``make_event``). A field
# not listed keeps its value.
SPEC_CHANGES: dict[tuple[RequestState, EventKind], dict[str, object]] = {
    (P, E.CLAIM): {"state": CL, "daemon_id": OTHER_DAEMON, "claimed_at": NOW, "attempts": 4},
    (CL, E.START): {"state": PR, "started_at": NOW},
    # The attempt stays used on a reclaim (its failure says why: reason lost, from the
    # event) and is refunded on a release.
    (CL, E.RECLAIM): {"state": P, **_CLEARED_OWNER, "not_before": NOW, "failure": FAILURE},
    (PR, E.RECLAIM): {"state": P, **_CLEARED_OWNER, "not_before": NOW, "failure": FAILURE},
    (CL, E.RELEASE): {"state": P, **_CLEARED_OWNER, "not_before": NOW, "budget_base": 2},
    (PR, E.RELEASE): {"state": P, **_CLEARED_OWNER, "not_before": NOW, "budget_base": 2},
    (PR, E.SUCCEED): _SUCCEEDED,
    # A result stores what its attempt reported (status and body) with the failure.
    (PR, E.RETRY): {
        "state": P,
        **_CLEARED_OWNER,
        "not_before": NOW + timedelta(seconds=10),
        "response_status": 200,
        "response_body": '{"ok": true}',
        "failure": FAILURE,
    },
    (PR, E.FAIL): {
        "state": FA,
        "finished_at": NOW,
        "response_status": 200,
        "response_body": '{"ok": true}',
        "failure": FAILURE,
    },
    (P, E.CANCEL): {"state": CA, "finished_at": NOW, "failure": _CANCELLED},
    (CL, E.CANCEL): {"state": CA, "finished_at": NOW, "failure": _CANCELLED},
    # In flight, the owner records the cancel as its attempt's result.
    (PR, E.CANCEL): {
        "state": CA,
        "finished_at": NOW,
        "response_status": 200,
        "response_body": '{"ok": true}',
        "failure": _CANCELLED,
    },
    (P, E.EXPIRE): {"state": CA, "finished_at": NOW, "failure": _EXPIRED},
    (CL, E.EXPIRE): {"state": CA, "finished_at": NOW, "failure": _EXPIRED},
    (PR, E.EXPIRE): {
        "state": CA,
        "finished_at": NOW,
        "response_status": 200,
        "response_body": '{"ok": true}',
        "failure": _EXPIRED,
    },
    (CA, E.SUCCEED): _SUCCEEDED,
    (FA, E.MANUAL_RETRY): _MANUAL_RETRY,
    (CA, E.MANUAL_RETRY): _MANUAL_RETRY,
}


@pytest.mark.parametrize(("state", "kind"), list(SPEC_CHANGES))
def test_each_transition_changes_exactly_its_fields(state: RequestState, kind: EventKind) -> None:
    request = make_request(state, sent=kind is not E.START)
    result = step(request, make_event(kind, request), NOW)
    assert result.request == attrs.evolve(request, **SPEC_CHANGES[(state, kind)])


def test_spec_changes_cover_the_spec() -> None:
    assert SPEC_CHANGES.keys() == SPEC.keys()
    assert all(changes["state"] is SPEC[pair] for pair, changes in SPEC_CHANGES.items())


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


def test_a_stale_late_success_is_refused() -> None:
    """Attempt 1 was sent and lost with its daemon; attempt 2 was sent and cancelled."""
    r = Request(uuid.UUID(int=1), uuid.UUID(int=2), RequestState.PENDING, not_before=NOW)
    for kind in (E.CLAIM, E.START, E.RECLAIM, E.CLAIM, E.START, E.CANCEL):
        r = step(r, Event(kind, daemon_id=DAEMON, attempt=r.attempts), NOW).request
    assert (r.state, r.attempts) == (CA, 2)
    stale = Event(E.SUCCEED, attempt=1, status=200, body="{}")
    with pytest.raises(IllegalTransition):
        step(r, stale, NOW)
    billed = step(r, attrs.evolve(stale, attempt=2), NOW).request
    assert billed.state is CO
    # After a manual retry and a claim that never started, no earlier attempt counts.
    r = step(r, Event(E.MANUAL_RETRY), NOW).request
    r = step(r, Event(E.CLAIM, daemon_id=DAEMON), NOW).request
    r = step(r, Event(E.CANCEL), NOW).request
    for attempt in (1, 2, 3):
        with pytest.raises(IllegalTransition):
            step(r, attrs.evolve(stale, attempt=attempt), NOW)


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


@pytest.mark.parametrize(("state", "kind"), list(SPEC))
def test_only_start_and_aborting_exits_have_effects(state: RequestState, kind: EventKind) -> None:
    request = make_request(state)
    effects = step(request, make_event(kind, request), NOW).effects
    if kind is EventKind.START:
        assert effects == (Effect.SEND,)
    elif (state, kind) in SPEC_ABORTS:
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
    """What engine.md says should happen, tracked without ``step`` or ``TRANSITIONS``."""

    state: RequestState = RequestState.PENDING
    attempts: int = 0
    budget_used: int = 0
    sent_attempt: int | None = None  # the current attempt, once its HTTP call was started
    ever_sent: set[int] = attrs.Factory(set)  # every attempt whose HTTP call was started

    def legal(self, kind: EventKind, attempt: int) -> bool:
        if (self.state, kind) not in SPEC:
            return False
        if (self.state, kind) == (CA, E.SUCCEED):
            # Billed work wins, but only the current attempt's, and only if it was sent: a
            # stale attempt's result was fenced off when its request moved on.
            return self.sent_attempt is not None and self.sent_attempt == attempt
        return True

    def advance(self, kind: EventKind) -> None:
        self.state = SPEC[(self.state, kind)]
        if kind is E.CLAIM:
            self.attempts += 1
            self.budget_used += 1
        elif kind is E.START:
            self.sent_attempt = self.attempts
            self.ever_sent.add(self.attempts)
        elif kind is E.RELEASE:
            self.budget_used -= 1
            self.sent_attempt = None
        elif kind in {E.RECLAIM, E.RETRY}:
            self.sent_attempt = None
        elif kind is E.MANUAL_RETRY:
            self.budget_used = 0
            self.sent_attempt = None


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
        attempt = self.request.attempts - 1 if stale else self.request.attempts
        self._apply(kind, attempt, delay)

    def _apply(self, kind: EventKind, attempt: int, delay: int = 0) -> None:
        before = self.request
        event = Event(
            kind,
            daemon_id=DAEMON,
            attempt=attempt,
            not_before=self.now + timedelta(seconds=delay),
            status=200,
            body="{}",
            failure=FAILURE,
        )
        if not self.model.legal(kind, attempt):
            with pytest.raises(IllegalTransition):
                step(before, event, self.now)
            return
        result = step(before, event, self.now)
        self.request = result.request
        self.model.advance(kind)
        assert self.request.state is self.model.state
        if kind in {EventKind.RETRY, EventKind.RELEASE, EventKind.RECLAIM}:
            assert self.request.not_before >= self.now
        if kind is EventKind.RETRY:
            assert self.request.not_before == max(self.now, event.not_before or self.now)

    # The rules below drive the paths random kinds alone seldom reach: the happy path,
    # and a cancel in flight followed by late results of the current or an older attempt.

    @precondition(lambda self: self.model.state is RequestState.PENDING)
    @rule()
    def claim_when_due(self) -> None:
        self.now = max(self.now, self.request.not_before)
        self._apply(EventKind.CLAIM, self.request.attempts)

    @precondition(lambda self: self.model.state is RequestState.CLAIMED)
    @rule()
    def start(self) -> None:
        self._apply(EventKind.START, self.request.attempts)

    @precondition(lambda self: self.model.state is RequestState.PROCESSING)
    @rule(kind=st.sampled_from([E.CANCEL, E.EXPIRE, E.RECLAIM, E.RETRY]))
    def interrupt(self, kind: EventKind) -> None:
        self._apply(kind, self.request.attempts)

    @precondition(lambda self: self.model.state is RequestState.CANCELED)
    @rule(age=st.integers(min_value=0, max_value=2))
    def late_success(self, age: int) -> None:
        attempt = self.request.attempts - age
        m = self.model
        if m.legal(E.SUCCEED, attempt):
            label = "billed"
        elif attempt in m.ever_sent:
            label = "stale, of an attempt that was sent"
        else:
            label = "of an attempt never sent"
        event(f"late success: {label}")
        self._apply(E.SUCCEED, attempt)

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
        if r.state in (RequestState.CLAIMED, RequestState.PROCESSING):
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
