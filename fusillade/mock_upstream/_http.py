"""HTTP/1.1 on one trio stream with h11: read a whole request, send a whole (or dripped) answer.

One ``HttpConnection`` per accepted socket; the server runs one task per connection and
answers its requests one after another (keep-alive; pipelined requests wait their turn).
"""

from __future__ import annotations

import contextlib
import http
import socket
import struct

import attrs
import h11
import trio

READ_SIZE = 64 * 1024
MAX_BODY = 64 * 1024 * 1024
MAX_HEAD = 64 * 1024
SERVER_HEADER = (b"server", b"fusillade-mock-upstream")
DRIP_CHUNKS = 10


_REASONS = {s.value: s.phrase.encode("ascii") for s in http.HTTPStatus}


class BodyTooLarge(Exception):
    """The request body is over ``MAX_BODY``."""


@attrs.frozen
class Request:
    method: str
    path: str
    headers: dict[str, str]  # lowercase names; repeated headers joined with ", "
    body: bytes


class HttpConnection:
    """The server side of one HTTP/1.1 connection."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self.status_sent: int | None = None  # the status of the answer to the current request

    async def next_request(self) -> Request | None:
        """The next whole request, or ``None`` when the client closed the connection between two.

        Raises:
            h11.RemoteProtocolError: not HTTP/1.1 we can parse (including a close mid-request).
            BodyTooLarge: a body over ``MAX_BODY``.
            trio.BrokenResourceError: the connection broke.
        """
        if self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE:
            self._h11.start_next_cycle()
        self.status_sent = None
        head: h11.Request | None = None
        chunks: list[bytes] = []
        size = 0
        while True:
            event = self._h11.next_event()
            if event is h11.NEED_DATA:
                if self._h11.they_are_waiting_for_100_continue:
                    await self._send(h11.InformationalResponse(status_code=100, headers=[]))
                self._h11.receive_data(await self.stream.receive_some(READ_SIZE))
            elif isinstance(event, h11.Request):
                head = event
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if size > MAX_BODY:
                    raise BodyTooLarge
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage) and head is not None:
                return _request(head, b"".join(chunks))
            elif isinstance(event, h11.ConnectionClosed):
                return None

    @property
    def can_answer(self) -> bool:
        """Whether an answer can still be sent (none started yet, the connection is open)."""
        return self._h11.our_state in (h11.IDLE, h11.SEND_RESPONSE)

    @property
    def reusable(self) -> bool:
        """Whether another request may follow on this connection (keep-alive)."""
        return self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE

    async def send(
        self, status: int, headers: list[tuple[bytes, bytes]], body: bytes, *, drip: float = 0.0
    ) -> None:
        """Send an answer; with ``drip`` > 0 the body goes out in pieces over that many seconds."""
        head = h11.Response(
            status_code=status,
            reason=_REASONS.get(status, b""),
            headers=[*headers, SERVER_HEADER, (b"content-length", str(len(body)).encode())],
        )
        self.status_sent = status
        if drip <= 0 or not body:
            await self._send(head, h11.Data(data=body), h11.EndOfMessage())
            return
        await self._send(head)
        pieces = min(DRIP_CHUNKS, len(body))
        step = -(-len(body) // pieces)
        for start in range(0, len(body), step):
            await trio.sleep(drip / pieces)
            await self._send(h11.Data(data=body[start : start + step]))
        await self._send(h11.EndOfMessage())

    async def wait_closed(self) -> None:
        """Wait until the client closes the connection, discarding anything it sends."""
        while await self.stream.receive_some(READ_SIZE):
            pass

    def abort(self) -> None:
        """Make the coming close a TCP reset (SO_LINGER 0) rather than an orderly FIN."""
        with contextlib.suppress(OSError):
            self.stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    async def _send(self, *events: h11.Event) -> None:
        data = b"".join(self._h11.send(event) or b"" for event in events)
        await self.stream.send_all(data)


def _request(head: h11.Request, body: bytes) -> Request:
    headers: dict[str, str] = {}
    for raw_name, raw_value in head.headers:
        name, value = raw_name.decode("ascii"), raw_value.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    target = head.target.decode("ascii", "replace")
    return Request(head.method.decode("ascii"), target.split("?", 1)[0], headers, body)
