"""Request bodies, read by the server itself before Litestar sees them.

Theory of operation
-------------------
Every body the server reads comes through ``body_chunks``: at most ``limit`` bytes
(else 413), and in time (else 408 and the connection is closed). "In time" is the rule
of Apache's mod_reqtimeout: the body must be complete ``BodyTiming.timeout`` seconds
after it started, plus one second for every ``min_rate`` bytes received so far. A large
upload on a slow but steady link earns its time; a client trickling a byte every few
seconds (holding a connection and a task for ever) is cut off. hypercorn's own
``read_timeout`` cannot do this: it bounds each socket read, so a trickle passes it, and
it also runs while a client downloads (sending nothing), which would cut long downloads.
A client that goes away mid-body raises ``ClientDisconnected``: one INFO line, no
traceback (it is the client's doing).

Routes whose handler takes a JSON ``data`` parameter get their body through
``json_intake``, the application's ``before_request`` hook, which decides every way the
body can be wrong from facts it checks itself (never from a library's message):

- ``Content-Type`` must be ``application/json`` (else 415): a web page can make a
  browser send ``text/plain`` or a form to any address without asking, but not
  ``application/json``;
- the bytes must be UTF-8 (else 400 ``invalid_encoding``), decoded by Python;
- the text must be strict JSON nested at most ``MAX_JSON_DEPTH`` deep (else 400
  ``invalid_json``), parsed by ``loads_strict``, the parser of batch input lines.

The bytes and the parsed value are left in the connection's state, where Litestar's
extraction of ``data`` finds them (``Request.body()`` and ``Request.json()`` read that
state first): Litestar decodes nothing itself, and only converts the value to the
handler's type.
"""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any, Final

import anyio
import anyio.to_thread

# multipart (a Litestar dependency) ships no type information.
import multipart  # type: ignore[import-untyped]
from litestar import Request
from litestar.enums import RequestEncodingType
from litestar.exceptions.http_exceptions import RequestEntityTooLarge
from litestar.handlers import HTTPRouteHandler
from litestar.params import BodyKwarg
from litestar.utils.scope.state import ScopeState

from fusillade.core.strictjson import BadJSON, loads_strict
from fusillade.server.context import BodyTiming, context_of
from fusillade.server.errors import ClientDisconnected, Refused

MAX_JSON_DEPTH: Final = 64
"""Deepest nesting of a JSON request body (``{}`` is depth 1)."""
THREAD_PARSE_BYTES: Final = 64 * 1024
"""JSON bodies larger than this are parsed in a worker thread (the loop runs the daemon)."""
_JSON: Final = "application/json"


async def body_chunks(
    request: Request[Any, Any, Any], limit: int | None, timing: BodyTiming
) -> AsyncGenerator[bytes, None]:
    """The request body as it arrives, at most ``limit`` bytes, in time (see above).

    Raises:
        RequestEntityTooLarge: the body (or its announced length) exceeds ``limit``.
        Refused: 408, the body did not arrive in time.
        ClientDisconnected: the client went away first.
    """
    bound = math.inf if limit is None else limit
    announced = request.headers.get("content-length")
    if announced is not None and announced.isdigit() and int(announced) > bound:
        raise RequestEntityTooLarge
    start = anyio.current_time()
    total = 0
    while True:
        with anyio.CancelScope(deadline=timing.deadline(start, total)) as scope:
            message = await request.receive()
        if scope.cancelled_caught:
            waited = anyio.current_time() - start
            raise Refused(
                408,
                "request_timeout",
                f"the request body came too slowly: {total} bytes in {waited:.0f} s (allowed: "
                f"{timing.timeout:g} s plus 1 s per {timing.min_rate} bytes)",
                headers={"Connection": "close"},
                log=f"client too slow: {total} bytes of the body in {waited:.1f} s; "
                "answered 408 and closed the connection",
            )
        if message["type"] == "http.disconnect":
            raise ClientDisconnected(total)
        if message["type"] != "http.request":  # pragma: no cover - nothing else is sent
            continue
        body: bytes = message.get("body", b"")
        if body:
            total += len(body)
            if total > bound:
                raise RequestEntityTooLarge
            yield body
        if not message.get("more_body", False):
            return


def takes_json(handler: HTTPRouteHandler) -> bool:
    """Whether Litestar would decode the route's body as JSON (its ``data`` parameter)."""
    data = handler.parsed_fn_signature.parameters.get("data")
    if data is None:
        return False
    kwarg = data.kwarg_definition
    media = kwarg.media_type if isinstance(kwarg, BodyKwarg) else RequestEncodingType.JSON
    return bool(media == RequestEncodingType.JSON)


def _check_content_type(value: str | None) -> None:
    kind, options = multipart.parse_options_header(value or "")
    charset = str(options.get("charset", "utf-8")).lower()
    if str(kind).lower() != _JSON or charset not in ("utf-8", "utf8"):
        shown = (value or "none")[:100]
        raise Refused(
            415,
            "unsupported_media_type",
            f"send the body as JSON with Content-Type: application/json, got {shown!r}",
        )


def _parse(body: bytes) -> Any:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Refused(
            400,
            "invalid_encoding",
            f"the request body is not valid UTF-8 (byte {e.start} of {len(body)})",
        ) from None
    try:
        return loads_strict(text, MAX_JSON_DEPTH)
    except BadJSON as e:
        raise Refused(400, "invalid_json", f"the request body is not valid JSON: {e}") from None


async def json_intake(request: Request[Any, Any, Any]) -> None:
    """``before_request`` hook: read, check and parse the body of a JSON route.

    Returns ``None`` (the handler runs), having cached the body and its value.

    Raises:
        Refused: 415 (content type), 400 (encoding, JSON), 408 (too slow).
        RequestEntityTooLarge, ClientDisconnected.
    """
    handler = request.route_handler
    if not isinstance(handler, HTTPRouteHandler) or not takes_json(handler):
        return None
    timing = context_of(request).body_timing
    limit = handler.resolve_request_max_body_size()
    parts = []
    async with aclosing(body_chunks(request, limit, timing)) as chunks:
        async for chunk in chunks:
            parts.append(chunk)
    body = b"".join(parts)
    # Checked once the (bounded) body is read: the client gets the answer on a
    # connection it can go on using, not a reset while it is still sending.
    _check_content_type(request.headers.get("content-type"))
    state = ScopeState.from_scope(request.scope)
    state.body = body
    if body:  # empty: Litestar reports the missing body
        if len(body) > THREAD_PARSE_BYTES:
            state.json = await anyio.to_thread.run_sync(_parse, body)
        else:
            state.json = _parse(body)
    return None
