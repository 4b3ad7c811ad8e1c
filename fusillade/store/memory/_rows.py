"""The rows of the in-memory tables, and the CHECK constraints they must meet."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import attrs

from fusillade.core.models import (
    FailureReason,
    FileRecord,
    Request,
    RequestState,
)
from fusillade.core.strictjson import storable
from fusillade.core.webhooks import WebhookEvent
from fusillade.errors import StoreError
from fusillade.store.interface import DaemonInfo

P = RequestState.PENDING
PR = RequestState.PROCESSING
CA = RequestState.CANCELED
IN_FLIGHT = (RequestState.CLAIMED, PR)
UNSETTLED = (P, *IN_FLIGHT)
# As in postgres.py: cancel_batch turns this many pending rows canceled inline.
_INLINE_SWEEP = 10_000
_LOST_DEAD = "the daemon running this request stopped without recording a result"
_LOST_TIMED_OUT = "the request stayed in flight past its time limit"
_SMALLINT = range(-32768, 32768)


@attrs.frozen
class _File:
    record: FileRecord
    models: tuple[str, ...] = ()
    deleted_at: datetime | None = None


@attrs.frozen
class _Row:
    """A ``requests`` row: the state machine's ``Request`` plus the copied columns."""

    req: Request
    file_id: UUID
    line_number: int
    model: str
    batch_expires_at: datetime
    input_tokens: int | None = None
    output_tokens: int | None = None
    body_is_json: bool = False
    body_raw: bytes | None = attrs.field(default=None, repr=False)
    # when the completed result was recorded, as a follower orders lines (0012's result_xid)
    result_seq: int | None = None


@attrs.frozen
class _Daemon:
    info: DaemonInfo
    status: str
    started_at: datetime
    heartbeat_at: datetime
    stopped_at: datetime | None = None


def _no_nul(*values: str | None) -> None:
    """PostgreSQL text cannot hold NUL or a lone surrogate; refuse them here the same way."""
    if any(v is not None and not storable(v) for v in values):
        raise StoreError("database error: text values cannot contain NUL (0x00)")


def _check(row: _Row) -> None:
    """The CHECK constraints of the ``requests`` table (0001_initial.sql)."""
    r = row.req
    s = r.state
    owned = (r.daemon_id, r.claimed_at)
    ok = r.budget_base <= r.attempts and r.attempts >= 0 and r.budget_base >= 0
    if s is P:
        ok = ok and owned == (None, None) and r.started_at is None and r.finished_at is None
    elif s in IN_FLIGHT:
        ok = ok and None not in owned and r.finished_at is None
        ok = ok and (r.started_at is not None) == (s is PR)
    elif s is RequestState.COMPLETED:
        ok = ok and r.finished_at is not None
        ok = ok and r.response_status is not None and r.response_body is not None
    elif s is RequestState.FAILED:
        ok = ok and r.finished_at is not None and r.failure is not None
    else:
        reason = r.failure.reason if r.failure else None
        ok = ok and r.finished_at is not None
        ok = ok and reason in (FailureReason.CANCELLED, FailureReason.EXPIRED)
    if r.response_status is not None and r.response_status not in _SMALLINT:
        ok = False
    if not ok:
        raise StoreError(f"database error: request {r.id} would violate a check constraint")


@attrs.frozen
class _Key:
    """A row of idempotency_keys (``0010_idempotency_keys.sql``)."""

    fingerprint: str
    object_id: UUID
    created_at: datetime


@attrs.define
class _Event:
    """A row of webhook_events (0011_webhook_outbox.sql); ``event.attempts`` is the
    column."""

    event: WebhookEvent
    next_attempt_at: datetime
    claimed_by: UUID | None = None
    delivered_at: datetime | None = None
    given_up_at: datetime | None = None
    last_error: str | None = None

    @property
    def pending(self) -> bool:
        return self.delivered_at is None and self.given_up_at is None
