"""``/v1/files``: upload (streamed and validated), list, retrieve, delete, download."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeAlias

import anyio.to_thread
from litestar import Request, delete, get, post
from litestar.openapi.spec import OpenAPIMediaType as MediaTypeSpec
from litestar.openapi.spec import Operation, RequestBody, Schema
from litestar.openapi.spec.enums import OpenAPIFormat, OpenAPIType
from litestar.params import FromPath, FromQuery, QueryParameter

from fusillade.core.idempotency import IdempotencyKey, check_key, file_fingerprint
from fusillade.core.ids import PREFIXES, IdKind
from fusillade.engine import MAX_FILE_PAGE, expires_after
from fusillade.errors import ValidationError
from fusillade.server.context import Ctx, IdempotencyKeyHeader, Owner
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
    responses=error_responses(400, 401, 408, 409, 413),
    summary="Upload a batch input file",
    description="The JSONL is validated line by line while it streams; all or nothing. "
    "With an `Idempotency-Key`, the same upload (purpose, file name, content) is stored "
    "once.",
)
async def create_file(
    request: Request[Any, Any, Any],
    ctx: Ctx,
    owner: Owner,
    idempotency_key: IdempotencyKeyHeader = None,
) -> FileObject:
    engine = ctx.engine_for(owner)
    limits = engine.rules.limits
    if idempotency_key is not None:
        check_key(idempotency_key)  # before the body is read
    received = await receive_upload(
        request,
        limits,
        body_limit=ctx.settings.max_upload_bytes + MULTIPART_SLACK,
        timing=ctx.body_timing,
        digest=idempotency_key is not None,
    )
    # form fields are text; a number of seconds is checked as one (digits only)
    sent: dict[str, object] = {
        k.removeprefix("expires_after[").rstrip("]"): int(v) if v.isdigit() and v.isascii() else v
        for k, v in received.expires_after.items()
    }
    try:
        lifetime = expires_after(sent or None, param="expires_after")
    except ValidationError:
        await anyio.to_thread.run_sync(received.spool.close)
        raise
    idempotency = None
    if idempotency_key is not None:
        assert received.sha256 is not None
        fingerprint = file_fingerprint(
            received.purpose, received.filename, received.sha256, lifetime
        )
        idempotency = IdempotencyKey(idempotency_key, fingerprint)
    try:
        record = await engine.create_file(
            iter(received.spool),
            filename=received.filename,
            size_bytes=received.size,
            idempotency=idempotency,
            expires_after=lifetime,
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
    limit: Annotated[int, QueryParameter(ge=1, le=MAX_FILE_PAGE)] = MAX_FILE_PAGE,
    purpose: FromQuery[FilePurposeFilter | None] = None,
    order: FromQuery[Literal["asc", "desc"]] = "desc",
) -> FileList:
    page = await ctx.engine_for(owner).list_files(
        after=after,
        limit=limit,
        purposes=PURPOSE_FILTERS[purpose] if purpose else None,
        ascending=order == "asc",
    )
    return file_list(page.items, page.has_more)


@get("/files/{file_id:str}", responses=error_responses(401, 404), summary="Retrieve a file")
async def retrieve_file(ctx: Ctx, owner: Owner, file_id: FromPath[str]) -> FileObject:
    record = await ctx.engine_for(owner).get_file(file_id)
    return file_object(record)


@delete(
    "/files/{file_id:str}",
    status_code=200,
    responses=error_responses(401, 404),
    summary="Delete a file (soft delete)",
)
async def delete_file(ctx: Ctx, owner: Owner, file_id: FromPath[str]) -> FileDeleted:
    await ctx.engine_for(owner).delete_file(file_id)
    return FileDeleted(id=file_id, object="file", deleted=True)


@get(
    "/files/{file_id:str}/content",
    media_type="application/jsonl",
    responses=error_responses(401, 404),
    summary="Download a file's content",
    description="Input files: the stored lines. Output and error files: the batch's "
    "results so far, streamed (partial while the batch runs, marked `X-Incomplete: true`; "
    "GET /v1/batches/{id}/results follows them).",
)
async def file_content(ctx: Ctx, owner: Owner, file_id: FromPath[str]) -> CompleteStream:
    # The engine reads the first chunk now, so a failure is a proper error status; the
    # record is not sized: working out a finished batch's file size reads all its
    # results, which the download is about to do (docs/performance.md, P5).
    content = await ctx.engine_for(owner).file_content(file_id)
    headers = {"Content-Disposition": _attachment(content.record.filename)}
    if content.incomplete:  # the batch runs: an extension header, as Doubleword's
        headers["X-Incomplete"] = "true"
    return CompleteStream(content, media_type="application/jsonl", headers=headers)


def _attachment(filename: str) -> str:
    safe = "".join(
        c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in filename
    )
    return f'attachment; filename="{safe}"'


ROUTES = [create_file, list_files, retrieve_file, delete_file, file_content]
