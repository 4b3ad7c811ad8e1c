"""``CompleteStream``: a streamed response that frees its connection once it is sent.

Litestar's ``Stream`` sends the chunks in one task while another waits for the client's
``http.disconnect`` and then cancels both. hypercorn delivers that message *during* the
send of the last chunk: the send ends the response, and hypercorn, from inside that same
call, recycles the connection for keep-alive, tells the stream it is closed (the
``http.disconnect``) and only then restarts the connection's idle timer. The listener's
cancellation lands in that last step, the timer is never restarted, and the connection
stays open until the client closes it: clients that never close piled up connections,
and a graceful shutdown waited its whole grace period for each.

Here every send runs shielded, so a disconnect stops the stream between chunks only;
once the last chunk is sent the listener is cancelled and the response returns, leaving
the connection to hypercorn's keep-alive and idle handling like any other response. A
client that goes away mid-download still stops the stream at the next chunk.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from typing import TYPE_CHECKING, Any

import anyio
from litestar.response import Stream
from litestar.response.streaming import ASGIStreamingResponse
from litestar.utils.helpers import get_enum_string_value

if TYPE_CHECKING:
    from litestar import Litestar, Request
    from litestar.background_tasks import BackgroundTask, BackgroundTasks
    from litestar.datastructures import Cookie
    from litestar.enums import MediaType
    from litestar.response.base import ASGIResponse
    from litestar.types import Receive, Send, TypeEncodersMap


class _CompleteStreamingResponse(ASGIStreamingResponse):
    __slots__ = ()

    async def _cancel_on_disconnect(self, scope: anyio.CancelScope, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        scope.cancel()

    async def send_body(self, send: Send, receive: Receive) -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(self._cancel_on_disconnect, group.cancel_scope, receive)
            async for chunk in self.iterator:
                body = chunk if isinstance(chunk, bytes) else chunk.encode(self.encoding)
                with anyio.CancelScope(shield=True):
                    await send({"type": "http.response.body", "body": body, "more_body": True})
            with anyio.CancelScope(shield=True):
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            group.cancel_scope.cancel()  # sent: stop listening


class CompleteStream(Stream):
    """``Stream`` whose finished response frees its connection (see the module docstring)."""

    def to_asgi_response(
        self,
        app: Litestar | None,
        request: Request[Any, Any, Any],
        *,
        background: BackgroundTask | BackgroundTasks | None = None,
        cookies: Iterable[Cookie] | None = None,
        encoded_headers: Iterable[tuple[bytes, bytes]] | None = None,
        headers: dict[str, str] | None = None,
        is_head_response: bool = False,
        media_type: MediaType | str | None = None,
        status_code: int | None = None,
        type_encoders: TypeEncodersMap | None = None,
    ) -> ASGIResponse:
        # Stream.to_asgi_response, building the response class above.
        iterator = self.iterator
        if not isinstance(iterator, AsyncIterable | AsyncIterator | Iterable):
            iterator = iterator()
        return _CompleteStreamingResponse(
            background=self.background or background,
            content_length=0,
            cookies=self.cookies if cookies is None else itertools.chain(self.cookies, cookies),
            encoded_headers=encoded_headers,
            encoding=self.encoding,
            headers={**headers, **self.headers} if headers is not None else self.headers,
            is_head_response=is_head_response,
            iterator=iterator,
            media_type=get_enum_string_value(media_type or self.media_type or "application/json"),
            status_code=self.status_code or status_code,
        )
