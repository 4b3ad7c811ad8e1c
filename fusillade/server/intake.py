"""Request bodies, read by the server itself: bounded in size and in time.

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
"""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator
from typing import Any

import anyio
from litestar import Request
from litestar.exceptions.http_exceptions import RequestEntityTooLarge

from fusillade.server.context import BodyTiming
from fusillade.server.errors import ClientDisconnected, Refused


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
