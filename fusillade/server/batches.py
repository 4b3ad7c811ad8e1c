"""``/v1/batches``: create, list, retrieve, cancel, and the retry, requests and errors
extensions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Final, TypeAlias

import anyio
import anyio.to_thread
from litestar import Response, get, post
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from fusillade.core.live import MAX_CURSOR, LiveLine
from fusillade.core.models import RequestState
from fusillade.core.results import format_result_line
from fusillade.engine import LIVE_PAGE, MAX_PAGE, expires_after
from fusillade.server.context import Ctx, IdempotencyKeyHeader, Owner
from fusillade.server.files import cursor_param
from fusillade.server.responses import error_responses
from fusillade.server.wire import (
    BatchErrorsObject,
    BatchList,
    BatchObject,
    BatchRequestList,
    CreateBatchBody,
    RequestStatusName,
    batch_errors,
    batch_list,
    batch_object,
    request_list,
)

AfterBatch: TypeAlias = Annotated[str | None, cursor_param("batch")]
AfterRequest: TypeAlias = Annotated[str | None, cursor_param("request")]
PageSize: TypeAlias = Annotated[int, QueryParameter(ge=1, le=MAX_PAGE)]


@post(
    "/batches",
    status_code=200,
    responses=error_responses(400, 401, 404, 408, 409, 413, 415),
    summary="Create a batch",
    description="With an `Idempotency-Key`, the same request creates one batch.",
)
async def create_batch(
    ctx: Ctx,
    owner: Owner,
    data: JSONBody[CreateBatchBody],
    idempotency_key: IdempotencyKeyHeader = None,
) -> BatchObject:
    view = await ctx.engine_for(owner).create_batch(
        data.input_file_id,
        endpoint=data.endpoint,
        completion_window=data.completion_window,
        metadata=data.metadata,
        idempotency_key=idempotency_key,
        output_expires_after=expires_after(data.output_expires_after, param="output_expires_after"),
    )
    return batch_object(view)


@get("/batches", responses=error_responses(400, 401), summary="List batches, newest first")
async def list_batches(
    ctx: Ctx,
    owner: Owner,
    after: AfterBatch = None,
    limit: PageSize = 20,
) -> BatchList:
    page = await ctx.engine_for(owner).list_batches(after=after, limit=limit)
    return batch_list(page.items, page.has_more)


@get("/batches/{batch_id:str}", responses=error_responses(401, 404), summary="Retrieve a batch")
async def retrieve_batch(ctx: Ctx, owner: Owner, batch_id: FromPath[str]) -> BatchObject:
    view = await ctx.engine_for(owner).get_batch(batch_id)
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
    view = await ctx.engine_for(owner).cancel_batch(batch_id)
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
    view = await ctx.engine_for(owner).retry_failed(batch_id, include_cancelled=include_cancelled)
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
    limit: PageSize = 20,
    status: FromQuery[list[RequestStatusName] | None] = None,
) -> BatchRequestList:
    states = [RequestState(s) for s in status] if status else None
    view, page = await ctx.engine_for(owner).list_requests(
        batch_id, states=states, after=after, limit=limit
    )
    return request_list(page.items, view.record.created_at, page.has_more)


@get(
    "/batches/{batch_id:str}/errors",
    responses=error_responses(401, 404),
    summary="What holds a batch back and how its requests failed (extension)",
    description="Retries waiting (those after a 429 counted apart) and the latest error; "
    "with `kinds=true` also the five most frequent kinds of error, with counts and an "
    "example each. Messages are on one line, shortened, with secrets masked.",
)
async def batch_errors_route(
    ctx: Ctx, owner: Owner, batch_id: FromPath[str], kinds: FromQuery[bool] = False
) -> BatchErrorsObject:
    engine = ctx.engine_for(owner)
    trouble = await engine.batch_trouble(batch_id)
    summary = await engine.error_kinds(batch_id) if kinds else None
    return batch_errors(trouble, summary)


LIVE_WAIT_POLL: Final = 0.25
"""Seconds between reads while a ``wait`` of the results route finds nothing new."""
MAX_LIVE_WAIT: Final = 60.0
MAX_LIVE_PAGE: Final = 10_000


@get(
    "/batches/{batch_id:str}/results",
    media_type="application/jsonl",
    responses=error_responses(400, 401, 404),
    summary="Read a batch's output lines as they are recorded (extension)",
    description="The output file's lines after `after` (a cursor this route returned), "
    "at most `limit` (plus any a concurrent writer committed late), as JSONL: each line "
    "byte for byte as in the output file. `X-Fusillade-Cursor`: continue with `after=` "
    "it; `X-Incomplete: true`: more may come (the batch runs, or `limit` was reached); "
    "`false`: these were the last lines. With `wait` (seconds) the answer waits for a "
    "new line while there is none. Across reads every line comes exactly once, in an "
    "order that is not completion order (docs/semantics.md).",
)
async def batch_results(
    ctx: Ctx,
    owner: Owner,
    batch_id: FromPath[str],
    after: Annotated[
        str | None,
        QueryParameter(
            pattern=r"^[0-9]{1,20}\.[0-9a-f]{32}(~[0-9]{1,20}(\.[0-9a-f]{32})?)*$",
            max_length=MAX_CURSOR,
            description="continue after this cursor (the X-Fusillade-Cursor of a read)",
        ),
    ] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=MAX_LIVE_PAGE)] = LIVE_PAGE,
    wait: Annotated[float, QueryParameter(ge=0, le=MAX_LIVE_WAIT)] = 0,
) -> Response[bytes]:
    engine = ctx.engine_for(owner)
    page = await engine.read_live(batch_id, after=after, limit=limit)
    with anyio.move_on_after(wait):
        while not (page.lines or page.complete):
            await anyio.sleep(LIVE_WAIT_POLL)
            page = await engine.read_live(batch_id, after=after, limit=limit)
    headers = {
        "X-Fusillade-Cursor": str(page.cursor),
        "X-Incomplete": "false" if page.complete else "true",
        "X-Fusillade-Batch-Status": page.status.value,
    }
    body = await anyio.to_thread.run_sync(_jsonl, page.lines)
    return Response(body, media_type="application/jsonl", headers=headers)


def _jsonl(lines: Sequence[LiveLine]) -> bytes:
    """The lines as the output file has them (formatted in a worker thread)."""
    return "".join(format_result_line(x.line) + "\n" for x in lines).encode("utf-8")


ROUTES = [
    create_batch,
    list_batches,
    retrieve_batch,
    cancel_batch,
    retry_batch,
    list_batch_requests,
    batch_errors_route,
    batch_results,
]
