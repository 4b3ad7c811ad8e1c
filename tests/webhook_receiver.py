"""Test helper: a webhook receiver on loopback that answers as the test scripts it.

Real HTTP/1.1 (the mock upstream's connection code). ``script`` is consumed one entry per
request: an HTTP status to answer with, or ``"hang"`` (hold the request, never answer);
once it is empty every request gets 200. ``received`` holds every request, in order.
``stop()`` closes the listener and every connection (the port then refuses
connections); ``start(nursery)`` listens on the same port again::

    receiver = await WebhookReceiver.open(nursery, ["500", "200"])
"""

from __future__ import annotations

import attrs
import h11
import trio

from fusillade.mock_upstream._http import HttpConnection, Request


@attrs.define
class WebhookReceiver:
    port: int
    script: list[str]
    received: list[Request] = attrs.Factory(list)
    _scope: trio.CancelScope | None = None
    _arrived: trio.Event = attrs.Factory(trio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    @classmethod
    async def open(cls, nursery: trio.Nursery, script: list[str]) -> WebhookReceiver:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        receiver = cls(listeners[0].socket.getsockname()[1], list(script))
        await nursery.start(receiver._serve, listeners)
        return receiver

    async def start(self, nursery: trio.Nursery) -> None:
        listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
        await nursery.start(self._serve, listeners)

    def stop(self) -> None:
        assert self._scope is not None
        self._scope.cancel()

    async def wait_for(self, count: int, timeout: float = 30) -> list[Request]:
        """Wait until ``count`` requests have arrived; all of them."""
        with trio.fail_after(timeout):
            while len(self.received) < count:
                await self._arrived.wait()
        return self.received

    async def _serve(
        self,
        listeners: list[trio.SocketListener],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        with trio.CancelScope() as self._scope:
            async with trio.open_nursery() as nursery:
                await nursery.start(trio.serve_listeners, self._handle, listeners)
                task_status.started()

    async def _handle(self, stream: trio.SocketStream) -> None:
        connection = HttpConnection(stream)
        try:
            while True:
                request = await connection.next_request()
                if request is None:
                    return
                self.received.append(request)
                self._arrived.set()
                self._arrived = trio.Event()
                action = self.script.pop(0) if self.script else "200"
                if action == "hang":
                    await trio.sleep_forever()
                await connection.send(int(action), [], b"")
                if not connection.reusable:
                    return
        except (h11.RemoteProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(stream)
