"""The Litestar application: the ``/v1`` router (bearer keys), health, metrics, OpenAPI.

``create_app(ctx)`` builds it around a ``ServerContext``; ``fusillade.server.serve``
runs it on hypercorn's trio worker beside the daemon. Every route first passes
``check_host`` (the ``Host``/``Origin`` policy of ``auth.HostPolicy``); ``/v1`` routes
then ``require_key``; JSON routes get their body through ``intake.json_intake``. The
status page (``status``: ``/``, ``/status.json``) decides its own scope.
"""

from __future__ import annotations

from typing import Any, Final

import anyio
from litestar import Litestar, MediaType, Request, Response, Router, get
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.di import Provide
from litestar.handlers import BaseRouteHandler
from litestar.openapi import OpenAPIConfig
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from fusillade._version import __version__
from fusillade.server import batches, files, status
from fusillade.server.context import ServerContext, context_of
from fusillade.server.errors import exception_to_response
from fusillade.server.intake import json_intake
from fusillade.server.requestid import stamp
from fusillade.server.wire import Health
from fusillade.server.workers import merge_metrics

READY_TIMEOUT: Final = 5.0
"""Seconds the readiness probe waits for the database before answering 503."""
_OWNER_KEY: Final = "fusillade_owner"


def check_host(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Guard of every route: the ``Host`` and ``Origin`` headers (else 403)."""
    headers = connection.headers
    context_of(connection).hosts.check(headers.get("host"), headers.get("origin"))


def require_key(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Guard of every ``/v1`` route: the bearer key decides the owner (else 401)."""
    owner = context_of(connection).keys.owner_for(connection.headers.get("authorization"))
    connection.state[_OWNER_KEY] = owner


def provide_owner(request: Request[Any, Any, Any]) -> str:
    owner: str = request.state[_OWNER_KEY]
    return owner


def provide_ctx(request: Request[Any, Any, Any]) -> ServerContext:
    return context_of(request)


@get("/healthz", summary="Liveness", tags=["operations"])
async def healthz() -> Health:
    return Health(status="ok", database=None, daemon=None)


@get(
    "/readyz",
    summary="Readiness: the database answers and the daemon (if any) is healthy",
    tags=["operations"],
    responses={
        503: ResponseSpec(data_container=Health, description="Not ready", generate_examples=False)
    },
)
async def readyz(request: Request[Any, Any, Any]) -> Response[Health]:
    ctx = context_of(request)
    database = False
    with anyio.move_on_after(READY_TIMEOUT):
        try:
            await ctx.engine.ping()  # abandoned, not awaited, when the timeout passes
            database = True
        except Exception:
            database = False
    daemon = ctx.daemon.healthy if ctx.daemon is not None else None
    ok = database and daemon is not False
    health = Health(status="ok" if ok else "unavailable", database=database, daemon=daemon)
    return Response(health, status_code=200 if ok else 503, media_type=MediaType.JSON)


def require_metrics_key(
    connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler
) -> None:
    """Guard of ``/metrics``: the metrics key when one is configured (else 401); an
    owner's api key does not open it (docs/deployment.md)."""
    context_of(connection).metrics_key.owner_for(connection.headers.get("authorization"))


@get(
    "/metrics",
    summary="Prometheus metrics",
    description="Needs `Authorization: Bearer <metrics key>` when `[server] metrics_key_env` "
    "is set.",
    tags=["operations"],
    media_type=MediaType.TEXT,
    guards=[require_metrics_key],
)
async def metrics(request: Request[Any, Any, Any]) -> Response[bytes]:
    text = generate_latest()
    workers = context_of(request).workers
    if workers is not None and workers.count > 1:  # one deployment: one set of metrics
        text = merge_metrics([text, *await workers.metrics()])
    return Response(text, media_type=CONTENT_TYPE_LATEST)


@get("/openapi.json", include_in_schema=False)
async def openapi_json(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    return Response(
        request.app.openapi_schema.to_schema(), media_type="application/vnd.oai.openapi+json"
    )


def create_app(ctx: ServerContext) -> Litestar:
    """The ASGI application: the API over ``ctx.engine``."""
    v1 = Router(
        "/v1",
        route_handlers=[*files.ROUTES, *batches.ROUTES],
        guards=[require_key],
        dependencies={
            "owner": Provide(provide_owner, sync_to_thread=False),
            "ctx": Provide(provide_ctx, sync_to_thread=False),
        },
        security=[{"BearerAuth": []}],
        tags=["v1"],
    )
    return Litestar(
        route_handlers=[v1, healthz, readyz, metrics, openapi_json, *status.ROUTES],
        guards=[check_host],
        before_request=json_intake,
        exception_handlers={Exception: exception_to_response},
        before_send=[stamp],  # x-request-id on every answer
        state=State({"ctx": ctx}),
        request_max_body_size=ctx.settings.max_request_bytes,
        openapi_config=OpenAPIConfig(
            title="fusillade",
            version=__version__,
            description="OpenAI-compatible Files and Batches API (plus extensions).",
            # No HTML UI (it would load scripts from a CDN): the document only, also
            # at /openapi.json.
            path="/docs",
            render_plugins=[JsonRenderPlugin()],
            components=Components(
                security_schemes={"BearerAuth": SecurityScheme(type="http", scheme="bearer")}
            ),
        ),
        logging_config=None,
        debug=False,
    )
