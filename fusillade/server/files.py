"""``/v1/files``: upload (streamed and validated), list, retrieve, delete, download."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal, TypeAlias
from uuid import UUID

import anyio.to_thread
from litestar import Request, delete, get, post
from litestar.openapi.spec import OpenAPIMediaType as MediaTypeSpec
from litestar.openapi.spec import Operation, RequestBody, Schema
from litestar.openapi.spec.enums import OpenAPIFormat, OpenAPIType
from litestar.params import FromPath, FromQuery, QueryParameter

from fusillade.core.ids import PREFIXES, IdKind, parse_id
from fusillade.core.models import FilePurpose, FileRecord
from fusillade.core.results import format_input_line, format_result_line
from fusillade.errors import NotFound, ValidationError
from fusillade.server.context import Ctx, Owner
from fusillade.server.responses import error_responses
from fusillade.server.streaming import CompleteStream
from fusillade.server.upload import MULTIPART_SLACK, receive_upload
from fusillade.server.wire import (
    PURPOSE_FILTERS,
    FileDeleted,
    FileList,
    FileObject,
    FilePurposeFilter,
    file_list,
    file_object,
)

STREAM_BATCH: Final = 1000
"""Lines formatted per worker-thread hop when streaming a file's content."""
_DONE: Final = object()


def file_uuid(file_id: FromPath[str]) -> UUID:
    """The uuid of a public file id; a malformed id is simply not found.

    Raises:
        NotFound: ``file_id`` is not a ``file-<32 hex>`` id.
    """
    value = parse_id("file", file_id)
    if value is None:
        raise NotFound("file", file_id)
    return value


def after_uuid(kind: IdKind, after: str | None) -> UUID | None:
    """The uuid of a list cursor; an id that is not one of ``kind`` is a 400."""
    if after is None:
        return None
    value = parse_id(kind, after)
    if value is None:
        raise ValidationError(f"after: {after[:80]!r} is not a {kind} id", param="after")
    return value


def cursor_param(kind: IdKind) -> QueryParameter:
    """The ``after`` query parameter: an id of ``kind`` (anything else is a 400)."""
    return QueryParameter(
        pattern=f"^{PREFIXES[kind]}[0-9a-f]{{32}}$",
        description=f"list after this {kind} id (an id the listing returned)",
    )


AfterFile: TypeAlias = Annotated[str | None, cursor_param("file")]


@dataclass
class _UploadOperation(Operation):
    """Documents the multipart body, which the route parses itself (streaming)."""

    def __post_init__(self) -> None:
        schema = Schema(
            type=OpenAPIType.OBJECT,
            properties={
                "file": Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY),
                "purpose": Schema(type=OpenAPIType.STRING, enum=["batch"]),
            },
            required=["file", "purpose"],
        )
        self.request_body = RequestBody(
            content={"multipart/form-data": MediaTypeSpec(schema=schema)},
            required=True,
            description="An OpenAI batch JSONL file ('file') and purpose 'batch'.",
        )


@post(
    "/files",
    status_code=200,
    request_max_body_size=None,  # enforced while streaming: max_upload_bytes + framing
    operation_class=_UploadOperation,
    responses=error_responses(400, 401, 408, 413),
    summary="Upload a batch input file",
    description="The JSONL is validated line by line while it streams; all or nothing.",
)
async def create_file(request: Request[Any, Any, Any], ctx: Ctx, owner: Owner) -> FileObject:
    limits = ctx.upload_limits
    received = await receive_upload(
        request,
        limits,
        body_limit=ctx.settings.max_upload_bytes + MULTIPART_SLACK,
        timing=ctx.body_timing,
    )
    now = ctx.clock()  # on the event loop: the clock advances by the loop's time
    try:
        record: FileRecord = await ctx.call(
            lambda: ctx.repo.create_file(
                owner,
                received.filename,
                iter(received.spool),
                now=now,
                size_bytes=received.size,
            )
        )
    finally:
        await anyio.to_thread.run_sync(received.spool.close)
    return file_object(record)


@get(
    "/files",
    responses=error_responses(400, 401),
    summary="List files",
    description="Newest first (`order=asc`: oldest first). `purpose=batch_output` lists "
    "output and error files (both have that purpose); `batch_error` only error files.",
)
async def list_files(
    ctx: Ctx,
    owner: Owner,
    after: AfterFile = None,
    limit: Annotated[int, QueryParameter(ge=1, le=10_000)] = 10_000,
    purpose: FromQuery[FilePurposeFilter | None] = None,
    order: FromQuery[Literal["asc", "desc"]] = "desc",
) -> FileList:
    cursor = after_uuid("file", after)
    page = await ctx.call(
        ctx.repo.list_files,
        owner,
        after=cursor,
        limit=limit,
        purposes=PURPOSE_FILTERS[purpose] if purpose else None,
        ascending=order == "asc",
    )
    return file_list(page.items, page.has_more)


@get("/files/{file_id:str}", responses=error_responses(401, 404), summary="Retrieve a file")
async def retrieve_file(ctx: Ctx, owner: Owner, file_id: FromPath[str]) -> FileObject:
    record = await ctx.call(ctx.repo.get_file, owner, file_uuid(file_id))
    return file_object(record)


@delete(
    "/files/{file_id:str}",
    status_code=200,
    responses=error_responses(401, 404),
    summary="Delete a file (soft delete)",
)
async def delete_file(ctx: Ctx, owner: Owner, file_id: FromPath[str]) -> FileDeleted:
    await ctx.call(ctx.repo.delete_file, owner, file_uuid(file_id), now=ctx.clock())
    return FileDeleted(id=file_id, object="file", deleted=True)


def _next_chunk(lines: Iterator[Any], fmt: Callable[[Any], str]) -> bytes | None:
    """Up to ``STREAM_BATCH`` formatted lines, or ``None`` at the end (runs in a thread)."""
    out: list[str] = []
    for item in lines:
        out.append(fmt(item))
        if len(out) >= STREAM_BATCH:
            break
    if not out:
        return None
    return ("\n".join(out) + "\n").encode("utf-8")


class ContentStream:
    """The body of a content download: formatted lines, ``STREAM_BATCH`` per thread hop.

    A plain async iterator (not an async generator), so a client that goes away
    mid-download leaves nothing to finalise: the repository's iterators hold no
    connection between pages.
    """

    def __init__(self, first: bytes | None, lines: Iterator[Any], fmt: Callable[[Any], str]):
        self._next = first
        self._lines = lines
        self._fmt = fmt

    def __aiter__(self) -> ContentStream:
        return self

    async def __anext__(self) -> bytes:
        chunk = self._next
        if chunk is None:
            raise StopAsyncIteration
        self._next = await anyio.to_thread.run_sync(_next_chunk, self._lines, self._fmt)
        return chunk


@get(
    "/files/{file_id:str}/content",
    media_type="application/jsonl",
    responses=error_responses(401, 404),
    summary="Download a file's content",
    description="Input files: the stored lines. Output and error files: the batch's "
    "results so far, streamed (partial while the batch runs).",
)
async def file_content(ctx: Ctx, owner: Owner, file_id: FromPath[str]) -> CompleteStream:
    # Not sized: working out a finished batch's file size reads all its results, which
    # the download is about to do (docs/performance.md, P5).
    record = await ctx.call(ctx.repo.get_file, owner, file_uuid(file_id), sized=False)
    lines: Iterator[Any]
    fmt: Callable[[Any], str]
    if record.purpose is FilePurpose.BATCH:
        lines = ctx.repo.iter_templates(owner, record.id)
        fmt = format_input_line
    else:
        if record.batch_id is None:  # pragma: no cover - the schema forbids it
            raise NotFound("file", file_id)
        errors = record.purpose is FilePurpose.BATCH_ERROR
        lines = ctx.repo.iter_results(owner, record.batch_id, errors=errors)
        fmt = format_result_line
    # The first chunk is read before answering, so a failure is a proper error status.
    first = await anyio.to_thread.run_sync(_next_chunk, lines, fmt)
    return CompleteStream(
        ContentStream(first, lines, fmt),
        media_type="application/jsonl",
        headers={"Content-Disposition": _attachment(record.filename)},
    )


def _attachment(filename: str) -> str:
    safe = "".join(
        c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in filename
    )
    return f'attachment; filename="{safe}"'


ROUTES = [create_file, list_files, retrieve_file, delete_file, file_content]
