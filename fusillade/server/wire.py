"""The JSON objects of the HTTP API, shaped exactly like OpenAI's, and the mapping to them.

These attrs classes are what Litestar encodes and what the OpenAPI document describes.
Every field is required (no defaults) so the document marks every field as present;
nullable fields are typed ``X | None``. Timestamps are Unix seconds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from types import MappingProxyType
from typing import Any, Literal

import attrs

from fusillade.core.ids import format_id
from fusillade.core.models import BatchStatus, BatchView, FilePurpose, FileRecord
from fusillade.core.results import ERROR_CODES
from fusillade.core.trouble import BatchTrouble, ErrorKinds, ErrorSample
from fusillade.engine import RequestSummary
from fusillade.progress import describe

FilePurposeName = Literal["batch", "batch_output"]
"""A File's ``purpose`` on the wire: OpenAI's names. Error files are ``batch_output`` too
(OpenAI has no other name for them; the SDK's File type rejects any other value)."""
FilePurposeFilter = Literal["batch", "batch_output", "batch_error"]
"""``GET /v1/files?purpose=``: ``batch_output`` lists output and error files,
``batch_error`` (our extension) only error files."""
RequestStatusName = Literal["pending", "claimed", "processing", "completed", "failed", "canceled"]


def unix(value: datetime) -> int:
    return int(value.timestamp())


def unix_or_none(value: datetime | None) -> int | None:
    return None if value is None else int(value.timestamp())


# ------------------------------------------------------------------------- errors


@attrs.frozen
class BatchError:
    """One problem of an input file (OpenAI's ``BatchError``): line is 1-based."""

    code: str | None
    message: str | None
    param: str | None
    line: int | None


@attrs.frozen
class BatchErrors:
    object: Literal["list"]
    data: list[BatchError]


@attrs.frozen
class ErrorBody:
    """OpenAI's error object. ``errors`` is our addition: for a rejected input file it
    lists the first problems (each with its line and field); otherwise null."""

    message: str
    type: str
    param: str | None
    code: str | None
    errors: BatchErrors | None


@attrs.frozen
class ErrorResponse:
    """The error envelope of every non-2xx answer: ``{"error": {...}}``."""

    error: ErrorBody


# -------------------------------------------------------------------------- files


@attrs.frozen
class FileObject:
    id: str
    object: Literal["file"]
    bytes: int
    created_at: int
    filename: str
    purpose: FilePurposeName
    status: Literal["processed"]
    expires_at: int | None
    status_details: str | None


@attrs.frozen
class FileList:
    object: Literal["list"]
    data: list[FileObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


@attrs.frozen
class FileDeleted:
    id: str
    object: Literal["file"]
    deleted: bool


_WIRE_PURPOSES: Mapping[FilePurpose, FilePurposeName] = MappingProxyType(
    {
        FilePurpose.BATCH: "batch",
        FilePurpose.BATCH_OUTPUT: "batch_output",
        FilePurpose.BATCH_ERROR: "batch_output",
    }
)
PURPOSE_FILTERS: Mapping[FilePurposeFilter, frozenset[FilePurpose]] = MappingProxyType(
    {
        "batch": frozenset({FilePurpose.BATCH}),
        "batch_output": frozenset({FilePurpose.BATCH_OUTPUT, FilePurpose.BATCH_ERROR}),
        "batch_error": frozenset({FilePurpose.BATCH_ERROR}),
    }
)
"""The stored purposes each ``purpose=`` filter of ``GET /v1/files`` lists."""


def file_object(record: FileRecord) -> FileObject:
    """OpenAI's File for a record; an error file's purpose is ``batch_output``."""
    purpose = _WIRE_PURPOSES[record.purpose]
    return FileObject(
        id=format_id("file", record.id),
        object="file",
        bytes=record.bytes,
        created_at=unix(record.created_at),
        filename=record.filename,
        purpose=purpose,
        status="processed",
        expires_at=unix_or_none(record.expires_at),
        status_details=None,
    )


def file_list(records: Sequence[FileRecord], has_more: bool) -> FileList:
    data = [file_object(r) for r in records]
    return FileList(
        object="list",
        data=data,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
        has_more=has_more,
    )


# ------------------------------------------------------------------------ batches


@attrs.frozen
class RequestCountsObject:
    total: int
    completed: int
    failed: int


@attrs.frozen
class InputTokensDetails:
    cached_tokens: int


@attrs.frozen
class OutputTokensDetails:
    reasoning_tokens: int


@attrs.frozen
class BatchUsage:
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


@attrs.frozen
class BatchObject:
    id: str
    object: Literal["batch"]
    endpoint: str
    errors: BatchErrors | None
    input_file_id: str
    completion_window: str
    status: BatchStatus
    output_file_id: str | None
    error_file_id: str | None
    created_at: int
    in_progress_at: int | None
    expires_at: int | None
    finalizing_at: int | None
    completed_at: int | None
    failed_at: int | None
    expired_at: int | None
    cancelling_at: int | None
    cancelled_at: int | None
    request_counts: RequestCountsObject
    metadata: dict[str, str] | None
    usage: BatchUsage | None
    # an extension: when the batch was found to miss its deadline at its current rate
    # (it is then claimed ahead of its turn), null while on course
    escalated_at: int | None


@attrs.frozen
class BatchList:
    object: Literal["list"]
    data: list[BatchObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


def batch_object(view: BatchView) -> BatchObject:
    """OpenAI's Batch for a view.

    ``request_counts.failed`` counts failed *and* canceled requests (cancelled and
    expired lines are in the error file, as at OpenAI), so ``completed + failed`` is the
    number of settled requests. The output and error file ids are set only when the
    file has at least one line (a batch where every line failed has no output file).
    """
    record = view.record
    counts = view.counts
    usage = None
    if record.usage is not None:
        usage = BatchUsage(
            input_tokens=record.usage.input_tokens,
            input_tokens_details=InputTokensDetails(cached_tokens=0),
            output_tokens=record.usage.output_tokens,
            output_tokens_details=OutputTokensDetails(reasoning_tokens=0),
            total_tokens=record.usage.total_tokens,
        )
    return BatchObject(
        id=format_id("batch", record.id),
        object="batch",
        endpoint=record.endpoint,
        errors=None,
        input_file_id=format_id("file", record.input_file_id),
        completion_window=record.completion_window,
        status=view.status,
        output_file_id=format_id("file", record.output_file_id) if view.has_output else None,
        error_file_id=format_id("file", record.error_file_id) if view.has_errors else None,
        created_at=unix(record.created_at),
        in_progress_at=unix_or_none(view.in_progress_at),
        expires_at=unix(record.expires_at),
        finalizing_at=unix_or_none(view.finalizing_at),
        completed_at=unix_or_none(view.completed_at),
        failed_at=unix_or_none(view.failed_at),
        expired_at=unix_or_none(view.expired_at),
        cancelling_at=unix_or_none(view.cancelling_at),
        cancelled_at=unix_or_none(view.cancelled_at),
        request_counts=RequestCountsObject(
            total=counts.total,
            completed=counts.completed,
            failed=counts.failed + counts.canceled,
        ),
        metadata=dict(record.metadata) if record.metadata is not None else None,
        usage=usage,
        escalated_at=unix_or_none(view.escalated_at),
    )


def batch_list(views: Sequence[BatchView], has_more: bool) -> BatchList:
    data = [batch_object(v) for v in views]
    return BatchList(
        object="list",
        data=data,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
        has_more=has_more,
    )


@attrs.frozen
class CreateBatchBody:
    """The body of ``POST /v1/batches``; other keys are accepted and ignored.
    ``output_expires_after`` is ``{"anchor": "created_at", "seconds": N}``, checked by
    ``fusillade.engine._rules.expires_after``."""

    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None = None
    output_expires_after: dict[str, Any] | None = None


# ------------------------------------------------------------ per-request view


@attrs.frozen
class RequestError:
    code: str
    message: str


@attrs.frozen
class BatchRequestObject:
    """One request of a batch (extension): where it stands and how it ended."""

    id: str
    object: Literal["batch.request"]
    custom_id: str
    model: str
    status: RequestStatusName
    attempts: int
    response_status: int | None
    error: RequestError | None
    created_at: int
    completed_at: int | None


@attrs.frozen
class BatchRequestList:
    object: Literal["list"]
    data: list[BatchRequestObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


def _request_error(summary: RequestSummary) -> RequestError | None:
    if summary.failure_reason is None:
        return None
    code = ERROR_CODES[summary.failure_reason]  # every reason has its code
    return RequestError(code=code, message=summary.failure_message or code)


def request_object(summary: RequestSummary, created_at: datetime) -> BatchRequestObject:
    status: RequestStatusName = summary.state.value
    return BatchRequestObject(
        id=format_id("request", summary.id),
        object="batch.request",
        custom_id=summary.custom_id,
        model=summary.model,
        status=status,
        attempts=summary.attempts,
        response_status=summary.response_status,
        error=_request_error(summary),
        created_at=unix(created_at),
        completed_at=unix_or_none(summary.finished_at),
    )


def request_list(
    summaries: Sequence[RequestSummary], created_at: datetime, has_more: bool
) -> BatchRequestList:
    data = [request_object(s, created_at) for s in summaries]
    return BatchRequestList(
        object="list",
        data=data,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
        has_more=has_more,
    )


# --------------------------------------------------------------------- health


@attrs.frozen
class Health:
    status: Literal["ok", "unavailable"]
    database: bool | None
    daemon: bool | None


# ------------------------------------------------------------------- batch errors


EXAMPLE_WIDTH = 200
"""Characters of an error message the batch errors extension sends (masked, one line)."""


@attrs.frozen
class BatchErrorObject:
    """One error of a batch (extension): its kind (``http 401``, ``timeout``...), its
    recorded reason and upstream status, and what the upstream said, on one line with
    secrets masked."""

    kind: str
    reason: str
    status: int | None
    message: str


@attrs.frozen
class BatchErrorKindObject:
    """How many of the batch's finished requests failed with one kind of error."""

    kind: str
    reason: str
    status: int | None
    count: int
    example: str


@attrs.frozen
class BatchErrorsObject:
    """What holds a batch back and how its requests failed (extension; docs/api.md)."""

    object: Literal["batch.errors"]
    retries_waiting: int
    retries_waiting_capped: bool
    rate_limited: int
    latest_error: BatchErrorObject | None
    kinds: list[BatchErrorKindObject] | None
    # the failed and canceled requests the kinds count: the latest ones, at most a
    # million (kinds_capped: there were more)
    kinds_scanned: int | None
    kinds_capped: bool | None


def _error_object(sample: ErrorSample) -> BatchErrorObject:
    message = describe(sample, EXAMPLE_WIDTH, kind=False)
    return BatchErrorObject(sample.kind, sample.reason.value, sample.status, message)


def batch_errors(trouble: BatchTrouble, kinds: ErrorKinds | None) -> BatchErrorsObject:
    latest = trouble.latest_error
    return BatchErrorsObject(
        object="batch.errors",
        retries_waiting=trouble.retries_waiting,
        retries_waiting_capped=trouble.capped,
        rate_limited=trouble.rate_limited,
        latest_error=_error_object(latest) if latest is not None else None,
        kinds=None
        if kinds is None
        else [
            BatchErrorKindObject(
                k.kind,
                k.example.reason.value,
                k.example.status,
                k.count,
                describe(k.example, EXAMPLE_WIDTH, kind=False),
            )
            for k in kinds.kinds
        ],
        kinds_scanned=None if kinds is None else kinds.scanned,
        kinds_capped=None if kinds is None else kinds.capped,
    )
