"""One attempt at a request: what a claim hands the daemon, and what its end writes.

Theory of operation
-------------------
A claim returns a ``ClaimedRequest``: what to send, and the request as the daemon now
holds it (``held()``: processing, owned by this daemon, this attempt, started). When the
attempt ends, ``result()`` applies the state table's event for what happened
(``ResultKind``) to that request with ``fusillade.core.transitions.step``. The
``AttemptResult`` it returns carries the request as the core computed it (its new state
and every field) and the states the stored row may be in for the event to leave it so
(``sources``). A store writes it as a compare-and-set: those values, only while the row
is still in one of those states under this daemon, at this attempt and with this start.
No store decides a result's state or fields again.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Final
from uuid import UUID

import attrs

from fusillade.core.models import Failure, Request, RequestState
from fusillade.core.transitions import TRANSITIONS, Event, EventKind, sources, step

_PROCESSING = RequestState.PROCESSING


class ResultKind(enum.Enum):
    """What one attempt came to; each value is the state table's event for it."""

    SUCCEEDED = EventKind.SUCCEED
    RETRY = EventKind.RETRY  # pending again, due at the result's ``not_before``
    FAILED = EventKind.FAIL
    CANCELLED = EventKind.CANCEL  # aborted in flight: its batch was cancelled
    EXPIRED = EventKind.EXPIRE  # aborted in flight: its batch's window passed

    @property
    def event(self) -> EventKind:
        """The state table's event; the state it leaves a request in is the table's."""
        return self.value


class AbortReason(enum.StrEnum):
    """Why a daemon must abort the requests of a batch it has in flight."""

    CANCELLED = "cancelled"
    EXPIRED = "expired"

    @property
    def kind(self) -> ResultKind:
        """What the aborted attempt is recorded as."""
        return ResultKind.CANCELLED if self is AbortReason.CANCELLED else ResultKind.EXPIRED


# The Request fields a result writes: the state and what the result events' transitions
# from processing update (the other states a result may find its row in have rows with
# the same updates: ``sources``). A store writes exactly these, as the core computed them.
RESULT_FIELDS: Final = tuple(
    sorted(frozenset().union(*(TRANSITIONS[(_PROCESSING, k.event)].fields for k in ResultKind)))
)


@attrs.frozen
class ClaimedRequest:
    """Everything needed to send one claimed request, returned by the claim itself.

    ``daemon_id``, ``claimed_at``, ``started_at`` and ``not_before`` are the row as the
    claim left it (claim and start are one write), so ``held`` is exactly the stored row's
    state-machine fields but the last attempt's response (which every result replaces).
    """

    id: UUID
    batch_id: UUID
    attempt: int
    budget_used: int
    model: str
    batch_expires_at: datetime
    custom_id: str
    endpoint: str
    method: str
    path: str
    body: str
    daemon_id: UUID
    claimed_at: datetime
    started_at: datetime
    not_before: datetime
    api_key: str | None = attrs.field(default=None, repr=False)

    def held(self) -> Request:
        """The request as the daemon holds it: processing, owned, this attempt, started."""
        # In Request's field order: id, batch, state, not_before, attempts, budget_base,
        # owner, claimed_at, started_at; the response fields stay unknown (None).
        budget_base = self.attempt - self.budget_used
        return Request(
            self.id, self.batch_id, _PROCESSING, self.not_before, self.attempt, budget_base,
            self.daemon_id, self.claimed_at, self.started_at,
        )  # fmt: skip

    def result(
        self,
        kind: ResultKind,
        at: datetime,
        status: int | None = None,
        body: str | None = None,
        failure: Failure | None = None,
        not_before: datetime | None = None,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        body_is_json: bool = False,
        body_raw: bytes | None = None,
    ) -> AttemptResult:
        """This attempt's result when it came to ``kind`` at ``at``: the state table's
        event applied to ``held()``.

        ``status`` and ``body`` are what the upstream answered (none for a transport
        error or an abort); ``failure`` why a retry or failure did not succeed (its reason
        and message are stored; the HTTP details are ``status`` and ``body``);
        ``not_before`` when a retry is due (never before ``at``: the table says so).
        """
        if failure is not None and (failure.status is not None or failure.body is not None):
            failure = Failure(failure.reason, failure.message)
        held = self.held()
        event = Event(
            kind.event,
            attempt=self.attempt,
            not_before=not_before,
            status=status,
            body=body,
            failure=failure,
        )
        new = step(held, event, at).request
        return AttemptResult(
            kind,
            self,
            new,
            sources(held, event),
            at,
            input_tokens,
            output_tokens,
            body_is_json,
            body_raw,
        )


@attrs.frozen
class AttemptResult:
    """One attempt's result as the core computed it (``ClaimedRequest.result``).

    ``request`` is the request after the event: the state and the ``RESULT_FIELDS`` a
    store writes. ``claimed`` is the attempt as the claim left it; a store writes only
    while the row still has its owner, attempt count and start, and is in one of
    ``sources``. The rest are details of the stored response.
    """

    kind: ResultKind
    claimed: ClaimedRequest
    request: Request
    sources: frozenset[RequestState]
    at: datetime  # when the attempt ended: the ``now`` of the step
    input_tokens: int | None = None
    output_tokens: int | None = None
    # the body is compact strict JSON (one line): output files embed it as it is
    body_is_json: bool = False
    # The exact bytes of the body when the body is only a rendering of them
    # (``fusillade.core.bodies``): not UTF-8, or holding a NUL byte.
    body_raw: bytes | None = attrs.field(default=None, repr=False)

    @property
    def request_id(self) -> UUID:
        return self.claimed.id

    @property
    def attempt(self) -> int:
        return self.claimed.attempt
