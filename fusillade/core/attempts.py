"""One attempt at a request: what the daemon claims, why it may abort, what it reports.

``ClaimedRequest`` is what a claim hands the daemon; ``AttemptResult`` is what the daemon
reports when the attempt ends. Its ``kind`` is the state table's event for it
(``fusillade.core.transitions``), so the state it leaves the request in is the table's,
never a second mapping.
"""

from __future__ import annotations

import enum
from datetime import datetime
from uuid import UUID

import attrs

from fusillade.core.models import Failure, RequestState
from fusillade.core.transitions import TRANSITIONS, EventKind


@attrs.frozen
class ClaimedRequest:
    """Everything needed to send one claimed request, returned by the claim itself."""

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
    api_key: str | None = attrs.field(default=None, repr=False)


class ResultKind(enum.Enum):
    """What one attempt came to; each value is the state table's event for it."""

    SUCCEEDED = EventKind.SUCCEED
    RETRY = EventKind.RETRY  # pending again, due at ``not_before``
    FAILED = EventKind.FAIL
    CANCELLED = EventKind.CANCEL  # aborted in flight: its batch was cancelled
    EXPIRED = EventKind.EXPIRE  # aborted in flight: its batch's window passed

    @property
    def event(self) -> EventKind:
        return self.value

    @property
    def state(self) -> RequestState:
        """The state a request in flight is left in (the table's target)."""
        return TRANSITIONS[(RequestState.PROCESSING, self.value)].target


class AbortReason(enum.StrEnum):
    """Why a daemon must abort the requests of a batch it has in flight."""

    CANCELLED = "cancelled"
    EXPIRED = "expired"

    @property
    def kind(self) -> ResultKind:
        """What the aborted attempt is recorded as."""
        return ResultKind.CANCELLED if self is AbortReason.CANCELLED else ResultKind.EXPIRED


@attrs.frozen
class AttemptResult:
    """The outcome of one attempt, fenced by ``attempt`` (the request's attempt count
    when it was claimed) and by the daemon that records it."""

    request_id: UUID
    attempt: int
    kind: ResultKind
    finished_at: datetime
    status: int | None = None
    body: str | None = None
    failure: Failure | None = None
    not_before: datetime | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    # ``body`` is compact strict JSON (one line): output files embed it as it is.
    body_is_json: bool = False
    # The exact bytes of the body when ``body`` is only a rendering of them
    # (``fusillade.core.bodies``): not UTF-8, or holding a NUL byte.
    body_raw: bytes | None = attrs.field(default=None, repr=False)
