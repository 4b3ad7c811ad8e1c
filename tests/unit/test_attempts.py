"""An attempt's result as the core computes it: what the stores write, and from where."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fusillade.core.attempts import (
    RESULT_FIELDS,
    AbortReason,
    ClaimedRequest,
    ResultKind,
)
from fusillade.core.models import Failure, FailureReason, RequestState
from fusillade.core.transitions import TRANSITIONS, Event, EventKind, sources

T0 = datetime(2026, 1, 1, tzinfo=UTC)
PR = RequestState.PROCESSING


def claimed(attempt: int = 2, budget_used: int = 1) -> ClaimedRequest:
    return ClaimedRequest(
        id=uuid.UUID(int=1),
        batch_id=uuid.UUID(int=2),
        attempt=attempt,
        budget_used=budget_used,
        model="m",
        batch_expires_at=T0 + timedelta(hours=1),
        custom_id="c",
        endpoint="",
        method="POST",
        path="/v1/chat/completions",
        body="{}",
        daemon_id=uuid.UUID(int=3),
        claimed_at=T0,
        started_at=T0,
        not_before=T0 - timedelta(minutes=1),
    )


def test_held_is_the_row_as_the_claim_left_it() -> None:
    held = claimed(attempt=3, budget_used=2).held()
    assert (held.state, held.attempts, held.budget_base, held.budget_used) == (PR, 3, 1, 2)
    assert (held.daemon_id, held.claimed_at, held.started_at) == (uuid.UUID(int=3), T0, T0)
    assert held.finished_at is None


def test_every_result_replaces_the_response_the_daemon_does_not_hold() -> None:
    """The held request leaves the last attempt's status, body and failure unknown (None);
    every result overwrites them, so what it computes never depends on them."""
    for kind in ResultKind:
        updates = TRANSITIONS[(PR, kind.event)].updates
        assert {"response_status", "response_body", "failure"} <= set(updates), kind


@pytest.mark.parametrize(
    ("kind", "state", "sources"),
    [
        (ResultKind.SUCCEEDED, RequestState.COMPLETED, {PR, RequestState.CANCELED}),
        (ResultKind.RETRY, RequestState.PENDING, {PR}),
        (ResultKind.FAILED, RequestState.FAILED, {PR}),
        (ResultKind.CANCELLED, RequestState.CANCELED, {PR}),
        (ResultKind.EXPIRED, RequestState.CANCELED, {PR}),
    ],
)
def test_each_kind_leaves_its_state_and_may_find_the_row_in_its_sources(
    kind: ResultKind, state: RequestState, sources: set[RequestState]
) -> None:
    """A success may replace the canceled result its owner recorded meanwhile (billed work
    wins); every other result applies only to the row still processing."""
    failure = Failure(FailureReason.TIMEOUT, "t")
    result = claimed().result(kind, T0, failure=failure)
    assert TRANSITIONS[(PR, kind.event)].target is state
    assert result.request.state is state
    assert result.sources == sources


def test_a_success_of_an_attempt_never_sent_may_not_replace_canceled() -> None:
    """(canceled, succeed) is guarded by was_sent: no start, no such source."""
    held = attrs.evolve(claimed().held(), started_at=None)
    succeed = Event(EventKind.SUCCEED, attempt=held.attempts, status=200, body="{}")
    assert sources(held, succeed) == {PR}
    assert sources(claimed().held(), succeed) == {PR, RequestState.CANCELED}


def test_aborts_record_the_tables_reason_whatever_is_reported() -> None:
    reported = Failure(FailureReason.TIMEOUT, "not this")
    for reason, expected in [
        (AbortReason.CANCELLED, Failure(FailureReason.CANCELLED, "batch cancelled")),
        (AbortReason.EXPIRED, Failure(FailureReason.EXPIRED, "batch expired")),
    ]:
        result = claimed().result(reason.kind, T0, failure=reported)
        assert result.request.failure == expected
        assert result.request.finished_at == T0


def test_a_failure_is_stored_without_its_http_details() -> None:
    """Status and body are the row's own columns; the failure keeps reason and message."""
    failure = Failure(FailureReason.HTTP_STATUS, "upstream answered 500", 500, "oops")
    result = claimed().result(ResultKind.FAILED, T0, 500, "oops", failure)
    assert result.request.failure == Failure(FailureReason.HTTP_STATUS, "upstream answered 500")
    assert (result.request.response_status, result.request.response_body) == (500, "oops")


def test_a_retry_is_never_due_before_its_attempt_ended() -> None:
    early = claimed().result(ResultKind.RETRY, T0, not_before=T0 - timedelta(seconds=5))
    late = claimed().result(ResultKind.RETRY, T0, not_before=T0 + timedelta(seconds=5))
    unset = claimed().result(ResultKind.RETRY, T0)
    assert (early.request.not_before, unset.request.not_before) == (T0, T0)
    assert late.request.not_before == T0 + timedelta(seconds=5)
    assert (late.request.daemon_id, late.request.claimed_at, late.request.started_at) == (
        None,
        None,
        None,
    )


@given(
    kind=st.sampled_from(list(ResultKind)),
    status=st.one_of(st.none(), st.integers(100, 599)),
    body=st.one_of(st.none(), st.text(max_size=5)),
    delay=st.one_of(st.none(), st.integers(-60, 60)),
)
def test_a_result_changes_only_the_fields_the_stores_write(
    kind: ResultKind, status: int | None, body: str | None, delay: int | None
) -> None:
    """The stores write ``RESULT_FIELDS`` and nothing else of the request: every field a
    result may change is among them."""
    not_before = None if delay is None else T0 + timedelta(seconds=delay)
    c = claimed()
    result = c.result(kind, T0, status, body, Failure(FailureReason.CONNECT, "x"), not_before)
    held = attrs.asdict(c.held(), recurse=False)
    new = attrs.asdict(result.request, recurse=False)
    changed = {f for f in held if held[f] != new[f]}
    assert changed <= set(RESULT_FIELDS)
    assert result.request_id == c.id and result.attempt == c.attempt


def test_result_kinds_are_the_tables_result_events() -> None:
    assert {k.event for k in ResultKind} == {
        EventKind.SUCCEED,
        EventKind.RETRY,
        EventKind.FAIL,
        EventKind.CANCEL,
        EventKind.EXPIRE,
    }
    assert {r.kind for r in AbortReason} == {ResultKind.CANCELLED, ResultKind.EXPIRED}
