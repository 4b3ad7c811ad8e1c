"""``x-request-id``: one fresh id per HTTP request, on every answer and in error logs.

OpenAI answers every request with an ``x-request-id`` header (``req_<hex>``), which the
official SDK exposes as ``_request_id``; fusillade does the same. The id is made the
first time something asks for it (the exception handler, to log it; or ``stamp``, as
the answer starts) and kept in the ASGI scope's ``state``, so the header and the log
line of the same request always agree.

An incoming ``x-request-id`` is not honoured: the id names the server's handling of the
request (as at OpenAI), and a client cannot choose what the server's logs say.
``stamp`` is a Litestar ``before_send`` hook, so it also covers the answers Litestar
makes before any route runs (404 for an unknown path, 405, 413).
"""

from __future__ import annotations

import secrets
from typing import Any, Final

from litestar.types import Message, Scope

HEADER: Final = "x-request-id"
PREFIX: Final = "req_"
_STATE_KEY: Final = "fusillade_request_id"


def request_id(scope: Scope) -> str:
    """The id of the request of ``scope``, made (``req_`` + 32 hex digits) on first use."""
    state: dict[str, Any] = scope.setdefault("state", {})
    found = state.get(_STATE_KEY)
    if isinstance(found, str):
        return found
    made = PREFIX + secrets.token_hex(16)
    state[_STATE_KEY] = made
    return made


def stamp(message: Message, scope: Scope) -> None:
    """Litestar ``before_send`` hook: add ``x-request-id`` to the start of every answer."""
    if message["type"] != "http.response.start":
        return
    name = HEADER.encode()
    headers = [(k, v) for k, v in message.get("headers", ()) if bytes(k).lower() != name]
    headers.append((name, request_id(scope).encode()))
    message["headers"] = headers
