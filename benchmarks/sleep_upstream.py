"""A cheap delaying upstream for thousands of requests in flight (P12), when nginx's echo
module is not there: ``python -m benchmarks.sleep_upstream PORT SECONDS [PROCESSES]``.

``fusillade mock-upstream`` (trio and h11, a task per connection) costs about 0.5 ms of
CPU per request: at 2,000 requests a second it would need a core of its own and become
the bottleneck on a small machine. This server is what nginx's ``echo_sleep`` is: an
asyncio protocol per connection that parses only the request line, the headers'
``Content-Length`` and the body's length, and answers every request with the canned
completion ``SECONDS`` after its body arrived (``loop.call_later``: no coroutine, no task
per request). Keep-alive, pipelining-safe (answers in order). ``PROCESSES`` > 1 forks
that many servers on one port with ``SO_REUSEPORT`` (the kernel spreads connections).
It prints ``READY`` once listening and stops on SIGTERM.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys

from benchmarks.common import CANNED_COMPLETION, READY_LINE

_BODY = CANNED_COMPLETION.encode()
RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
    + f"content-length: {len(_BODY)}\r\n\r\n".encode()
    + _BODY
)


class _Delayed(asyncio.Protocol):
    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.pending = 0  # answers scheduled, not yet written
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True

    def data_received(self, data: bytes) -> None:
        self.buf += data
        loop = asyncio.get_running_loop()
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            length = 0
            for line in self.buf[:end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            total = end + 4 + length
            if len(self.buf) < total:
                return
            self.buf = self.buf[total:]
            self.pending += 1
            loop.call_later(self.delay, self._answer)

    def _answer(self) -> None:
        self.pending -= 1
        if not self.closed and self.transport is not None:
            self.transport.write(RESPONSE)


async def _serve(sock: socket.socket, delay: float, announce: bool) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Delayed(delay), sock=sock, backlog=8192)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    if announce:
        print(READY_LINE, flush=True)
    async with server:
        await stop.wait()


def _listen(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(8192)
    sock.setblocking(False)
    return sock


def main(argv: list[str]) -> int:
    port, delay = int(argv[0]), float(argv[1])
    processes = int(argv[2]) if len(argv) > 2 else 1
    socks = [_listen(port) for _ in range(processes)]  # all bound before any answers
    children = []
    for sock in socks[1:]:
        pid = os.fork()
        if pid == 0:
            asyncio.run(_serve(sock, delay, announce=False))
            os._exit(0)
        children.append(pid)
    try:
        asyncio.run(_serve(socks[0], delay, announce=True))
    finally:
        for pid in children:
            os.kill(pid, signal.SIGTERM)
            os.waitpid(pid, 0)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
