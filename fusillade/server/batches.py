"""``/v1/batches``: create, list, retrieve, cancel, and the retry and requests extensions."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Final, TypeAlias
from uuid import UUID

from litestar import get, post
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from fusillade.config import ServerSettings
from fusillade.core.ids import parse_id
from fusillade.core.models import RequestState
from fusillade.core.strictjson import storable
from fusillade.core.windows import parse_completion_window
from fusillade.errors import NotFound, ValidationError
from fusillade.server.context import Ctx, Owner
from fusillade.server.files import after_uuid, cursor_param
from fusillade.server.responses import error_responses
from fusillade.server.wire import (
    BatchList,
    BatchObject,
    BatchRequestList,
    CreateBatchBody,
    RequestStatusName,
    batch_list,
    batch_object,
    request_list,
)
from fusillade.store.interface import BatchSpec, Page, RequestSummary

AfterBatch: TypeAlias = Annotated[str | None, cursor_param("batch")]
AfterRequest: TypeAlias = Annotated[str | None, cursor_param("request")]
MAX_METADATA_PAIRS: Final = 16
MAX_METADATA_KEY: Final = 64
MAX_METADATA_VALUE: Final = 512


def batch_uuid(batch_id: FromPath[str]) -> UUID:
    """Raises ``NotFound`` for anything but a ``batch_<32 hex>`` id."""
    value = parse_id("batch", batch_id)
    if value is None:
        raise NotFound("batch", batch_id)
    return value


def check_metadata(metadata: Mapping[str, str] | None) -> None:
    """OpenAI's limits: at most 16 pairs, keys up to 64 and values up to 512 characters.

    Raises:
        ValidationError: a limit is exceeded, or a string holds NUL or an unpaired
            surrogate (which PostgreSQL cannot store).
    """
    if metadata is None:
        return
    if len(metadata) > MAX_METADATA_PAIRS:
        raise ValidationError(
            f"metadata has {len(metadata)} pairs; at most {MAX_METADATA_PAIRS} are allowed",
            param="metadata",
        )
    for key, value in metadata.items():
        if len(key) > MAX_METADATA_KEY:
            raise ValidationError(
                f"metadata key {key[:20]!r}... is longer than {MAX_METADATA_KEY} characters",
                param="metadata",
            )
        if len(value) > MAX_METADATA_VALUE:
            raise ValidationError(
                f"metadata value of {key!r} is longer than {MAX_METADATA_VALUE} characters",
                param="metadata",
            )
        if not storable(key) or not storable(value):
            raise ValidationError(
                "metadata keys and values must not contain NUL or unpaired surrogates",
                param="metadata",
            )


def batch_spec(body: CreateBatchBody, settings: ServerSettings) -> BatchSpec:
    """Check a create request against the server's allow-lists.

    Raises:
        ValidationError: endpoint or completion window not allowed, bad metadata.
        NotFound: ``input_file_id`` is not a file id.
    """
    if body.endpoint not in settings.allowed_endpoints:
        allowed = ", ".join(settings.allowed_endpoints)
        raise ValidationError(
            f"endpoint {body.endpoint[:80]!r} is not supported; use one of {allowed}",
            param="endpoint",
        )
    if body.completion_window not in settings.completion_windows:
        allowed = ", ".join(repr(w) for w in settings.completion_windows)
        raise ValidationError(
            f"completion_window {body.completion_window[:40]!r} is not allowed; "
            f"this server accepts {allowed}",
            param="completion_window",
        )
    window = parse_completion_window(body.completion_window)
    check_metadata(body.metadata)
    file_id = parse_id("file", body.input_file_id)
    if file_id is None:
        raise NotFound("file", body.input_file_id)
    return BatchSpec(
        input_file_id=file_id,
        endpoint=body.endpoint,
        completion_window=body.completion_window,
        window=window,
        metadata=dict(body.metadata) if body.metadata is not None else None,
    )


@post(
    "/batches",
    status_code=200,
    responses=error_responses(400, 401, 404, 408, 413, 415),
    summary="Create a batch",
)
async def create_batch(ctx: Ctx, owner: Owner, data: JSONBody[CreateBatchBody]) -> BatchObject:
    spec = batch_spec(data, ctx.settings)
    view = await ctx.call(ctx.repo.create_batch, owner, spec, now=ctx.clock())
    return batch_object(view)


@get("/batches", responses=error_responses(400, 401), summary="List batches, newest first")
async def list_batches(
    ctx: Ctx,
    owner: Owner,
    after: AfterBatch = None,
    limit: Annotated[int, QueryParameter(ge=1, le=100)] = 20,
) -> BatchList:
    cursor = after_uuid("batch", after)
    page = await ctx.call(ctx.repo.list_batches, owner, now=ctx.clock(), after=cursor, limit=limit)
    return batch_list(page.items, page.has_more)


@get("/batches/{batch_id:str}", responses=error_responses(401, 404), summary="Retrieve a batch")
async def retrieve_batch(ctx: Ctx, owner: Owner, batch_id: FromPath[str]) -> BatchObject:
    view = await ctx.call(ctx.repo.get_batch, owner, batch_uuid(batch_id), now=ctx.clock())
    return batch_object(view)


@post(
    "/batches/{batch_id:str}/cancel",
    status_code=200,
    responses=error_responses(401, 404),
    summary="Cancel a batch",
    description="Returns the batch in `cancelling` (or `cancelled` when nothing was in "
    "flight). A batch that already ended is returned unchanged.",
)
async def cancel_batch(ctx: Ctx, owner: Owner, batch_id: FromPath[str]) -> BatchObject:
    view = await ctx.call(ctx.repo.cancel_batch, owner, batch_uuid(batch_id), now=ctx.clock())
    return batch_object(view)


@post(
    "/batches/{batch_id:str}/retry",
    status_code=200,
    responses=error_responses(400, 401, 404, 409),
    summary="Run the failed requests of a batch again (extension)",
    description="Failed requests (and cancelled ones with `include_cancelled=true`) go "
    "back to pending with a fresh retry budget. 409 while the batch is cancelling.",
)
async def retry_batch(
    ctx: Ctx, owner: Owner, batch_id: FromPath[str], include_cancelled: FromQuery[bool] = False
) -> BatchObject:
    view = await ctx.call(
        ctx.repo.retry_batch,
        owner,
        batch_uuid(batch_id),
        now=ctx.clock(),
        include_cancelled=include_cancelled,
    )
    return batch_object(view)


@get(
    "/batches/{batch_id:str}/requests",
    responses=error_responses(400, 401, 404),
    summary="List the requests of a batch (extension)",
    description="In input order; `status` (repeatable) filters by request state.",
)
async def list_batch_requests(
    ctx: Ctx,
    owner: Owner,
    batch_id: FromPath[str],
    after: AfterRequest = None,
    limit: Annotated[int, QueryParameter(ge=1, le=100)] = 20,
    status: FromQuery[list[RequestStatusName] | None] = None,
) -> BatchRequestList:
    uuid = batch_uuid(batch_id)
    cursor = after_uuid("request", after)
    states = [RequestState(s) for s in status] if status else None
    now = ctx.clock()

    def read() -> tuple[Page[RequestSummary], datetime]:
        view = ctx.repo.get_batch(owner, uuid, now=now)
        page = ctx.repo.list_requests(owner, uuid, states=states, after=cursor, limit=limit)
        return page, view.record.created_at

    page, created = await ctx.call(read)
    return request_list(page.items, created, page.has_more)


ROUTES = [
    create_batch,
    list_batches,
    retrieve_batch,
    cancel_batch,
    retry_batch,
    list_batch_requests,
]
