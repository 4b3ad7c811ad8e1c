"""Frozen records shared by every layer.

Records carry no serialisation details: rows and JSON reach them through
``fusillade.serde`` (or a store's ``from_row``), never straight through ``__init__``.
"""

from __future__ import annotations

import enum
from datetime import datetime
from uuid import UUID

import attrs


class RequestState(enum.StrEnum):
    """Where one request stands; see ``fusillade.core.transitions`` for the rules."""

    PENDING = "pending"
    CLAIMED = "claimed"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({RequestState.COMPLETED, RequestState.FAILED, RequestState.CANCELED})
UNSETTLED_STATES = frozenset({RequestState.PENDING, RequestState.CLAIMED, RequestState.PROCESSING})


class FailureReason(enum.StrEnum):
    """Typed reason stored with every failed or canceled request."""

    HTTP_STATUS = "http_status"
    TIMEOUT = "timeout"
    CONNECT = "connect"
    BUILDER = "builder"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    LOST = "lost"
    # The database refused the result (a data error no retry can fix): recorded as this
    # instead, so it never holds up other results (fusillade/runtime/writer.py).
    UNSTORABLE = "unstorable"


@attrs.frozen
class Failure:
    """Why an attempt did not succeed.

    ``status`` and ``body`` are set only when the upstream answered over HTTP. The api key
    is never part of a failure.
    """

    reason: FailureReason
    message: str
    status: int | None = None
    body: str | None = None


@attrs.frozen
class Request:
    """One request of one batch, as the state machine sees it.

    ``attempts`` counts claims and never decreases; it is also the fence that daemon
    writes carry. ``budget_base`` is where the current retry budget started: a manual
    retry moves it up to ``attempts`` and a graceful release refunds one, so the budget
    used is ``attempts - budget_base`` while ``attempts`` stays monotonic.
    """

    id: UUID
    batch_id: UUID
    state: RequestState
    not_before: datetime
    attempts: int = 0
    budget_base: int = 0
    daemon_id: UUID | None = None
    claimed_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    response_status: int | None = None
    response_body: str | None = None
    failure: Failure | None = None

    @property
    def budget_used(self) -> int:
        return self.attempts - self.budget_base


@attrs.frozen
class RequestTemplate:
    """One HTTP request of a file: what to send, and to which model it belongs.

    ``endpoint`` is the base URL (may be empty: the daemon's routing then decides),
    ``path`` the request path such as ``/v1/chat/completions`` and ``body`` the JSON text
    sent as is. ``api_key`` is optional and never returned by any read.
    """

    custom_id: str
    model: str
    body: str
    path: str = "/v1/chat/completions"
    method: str = "POST"
    endpoint: str = ""
    api_key: str | None = attrs.field(default=None, repr=False)


class FilePurpose(enum.StrEnum):
    BATCH = "batch"
    BATCH_OUTPUT = "batch_output"
    BATCH_ERROR = "batch_error"


@attrs.frozen
class FileRecord:
    id: UUID
    owner: str
    filename: str
    purpose: FilePurpose
    bytes: int
    line_count: int
    created_at: datetime
    expires_at: datetime | None = None
    batch_id: UUID | None = None


class BatchStatus(enum.StrEnum):
    """OpenAI's batch status names."""

    VALIDATING = "validating"
    FAILED = "failed"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in (
            BatchStatus.FAILED,
            BatchStatus.COMPLETED,
            BatchStatus.EXPIRED,
            BatchStatus.CANCELLED,
        )


@attrs.frozen
class RequestCounts:
    """Requests of one batch by state; the six parts always sum to ``total``."""

    total: int = 0
    pending: int = 0
    in_progress: int = 0
    completed: int = 0
    failed: int = 0
    canceled: int = 0

    @property
    def unsettled(self) -> int:
        return self.pending + self.in_progress

    @property
    def is_consistent(self) -> bool:
        parts = (self.pending, self.in_progress, self.completed, self.failed, self.canceled)
        return all(p >= 0 for p in parts) and sum(parts) == self.total


@attrs.frozen
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0


@attrs.frozen
class BatchRecord:
    """A batch row as stored: the inputs of ``fusillade.core.batches.derive``.

    Only two stamps are stored, ``cancelling_at`` (the cancel request) and
    ``expired_at`` (set by the expiry sweep when the window passed with work left);
    every other OpenAI timestamp is derived from these, the frozen counts and
    ``last_finished_at``. ``frozen_counts`` is written once the batch is terminal,
    under ``version`` (which a retry bumps) so a stale freeze can never land.
    """

    id: UUID
    owner: str
    input_file_id: UUID
    output_file_id: UUID
    error_file_id: UUID
    endpoint: str
    completion_window: str
    created_at: datetime
    expires_at: datetime
    total: int
    models: tuple[str, ...] = ()
    version: int = 0
    metadata: dict[str, str] | None = None
    cancelling_at: datetime | None = None
    expired_at: datetime | None = None
    frozen_counts: RequestCounts | None = None
    # token totals of completed requests, frozen with the counts (None while running)
    usage: Usage | None = None
    last_finished_at: datetime | None = None
    # when maintenance found the batch would miss its deadline at its current rate (it is
    # then claimed ahead: fusillade.core.deadlines); None while on course
    escalated_at: datetime | None = None


@attrs.frozen
class BatchView:
    """What a reader sees of a batch: the record plus its derived status and counts."""

    record: BatchRecord
    status: BatchStatus
    counts: RequestCounts
    in_progress_at: datetime | None
    finalizing_at: datetime | None
    completed_at: datetime | None
    failed_at: datetime | None
    expired_at: datetime | None
    cancelling_at: datetime | None
    cancelled_at: datetime | None
    has_output: bool
    has_errors: bool
    escalated_at: datetime | None = None
