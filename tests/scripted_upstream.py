"""Test helper: an upstream that answers each request with the exact bytes a test chose.

Real HTTP/1.1 over loopback (the mock upstream's own connection code), so the daemon's
dispatcher reads these answers exactly as it reads any upstream's. The answer is chosen
by the request's ``X-Fusillade-Custom-Id`` header (``answers[custom_id]``, else
``default``); ``hits`` counts requests per custom id::

    upstream = await nursery.start(serve_scripted_upstream, {"c0": (400, b"bad \\x00")})
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

import attrs
import h11
import trio

from fusillade.mock_upstream._http import HttpConnection

JSON = [(b"content-type", b"application/json")]


@attrs.define
class ScriptedUpstream:
    url: str
    answers: dict[str, tuple[int, bytes]]
    default: tuple[int, bytes] = (200, b'{"ok":true}')
    hits: Counter[str] = attrs.Factory(Counter)

    async def handle(self, stream: trio.SocketStream) -> None:
        connection = HttpConnection(stream)
        try:
            while True:
                request = await connection.next_request()
                if request is None:
                    return
                custom_id = request.headers.get("x-fusillade-custom-id", "")
                self.hits[custom_id] += 1
                status, body = self.answers.get(custom_id, self.default)
                await connection.send(status, JSON, body)
                if not connection.reusable:
                    return
        except (h11.RemoteProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(stream)


async def serve_scripted_upstream(
    answers: Mapping[str, tuple[int, bytes]],
    *,
    task_status: trio.TaskStatus[ScriptedUpstream] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; ``task_status.started(upstream)`` once listening."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    upstream = ScriptedUpstream(f"http://127.0.0.1:{port}", dict(answers))
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, upstream.handle, listeners)
        task_status.started(upstream)
