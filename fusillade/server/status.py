"""The status page: ``GET /`` (HTML), ``GET /status.json`` (what it polls) and its
script and style (``static/``), read-only and outside the OpenAPI document.

Whose work it shows (``status_scope``): the owner of the bearer key the page's script
sends; without a key, every owner's, to a local request (``auth.is_local_request``:
the operator on the server's machine) or when the server has no keys (it listens on
loopback only); else nothing but a prompt for a key, and 401 on the JSON. The page
loads nothing from elsewhere, and its Content-Security-Policy allows scripts, styles
and requests from the server itself only (no inline script), so a value that slipped
through escaping still could not run.
"""

from __future__ import annotations

from importlib import resources
from typing import Any, Final

from litestar import MediaType, Request, Response, get
from litestar.connection import ASGIConnection

from fusillade.server.auth import is_local_request
from fusillade.server.context import context_of
from fusillade.server.errors import Unauthorized
from fusillade.server.status_html import render_page, status_data

SECURITY_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_STATIC = resources.files("fusillade.server") / "static"


def status_scope(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    """The owner whose work the page shows; ``None``: every owner's.

    Raises:
        Unauthorized: keys are configured, and the request has a wrong key, or none and
            is not local.
    """
    ctx = context_of(connection)
    if not ctx.keys.enabled:
        return None
    authorization = connection.headers.get("authorization")
    if not authorization:
        client = connection.client.host if connection.client is not None else None
        if is_local_request(client, connection.headers):
            return None
    return ctx.keys.owner_for(authorization)


async def _data(request: Request[Any, Any, Any], owner: str | None) -> dict[str, Any]:
    engine = context_of(request).engine
    if owner is not None:
        engine = engine.for_owner(owner)
    return status_data(await engine.status(every_owner=owner is None), owner=owner)


@get("/", include_in_schema=False)
async def status_page(request: Request[Any, Any, Any]) -> Response[str]:
    try:
        owner = status_scope(request)
    except Unauthorized:
        page = render_page(None)  # the script asks for a key
    else:
        page = render_page(await _data(request, owner))
    return Response(page, media_type=MediaType.HTML, headers=SECURITY_HEADERS)


@get("/status.json", include_in_schema=False)
async def status_json(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    data = await _data(request, status_scope(request))
    return Response(data, media_type=MediaType.JSON, headers=SECURITY_HEADERS)


def _static(name: str, media_type: str) -> Response[bytes]:
    return Response((_STATIC / name).read_bytes(), media_type=media_type, headers=SECURITY_HEADERS)


@get("/status.js", include_in_schema=False)
async def status_script() -> Response[bytes]:
    return _static("status.js", "text/javascript; charset=utf-8")


@get("/status.css", include_in_schema=False)
async def status_style() -> Response[bytes]:
    return _static("status.css", "text/css; charset=utf-8")


ROUTES: Final = [status_page, status_json, status_script, status_style]
