"""Answers processed first come, first served: the fix for waves of thousands in flight.

Why
---
The event loop runs its runnable tasks round-robin, and httpcore yields to it about ten
times while it parses one answer and hands its connection back. When thousands of
answers arrive within a few milliseconds (every request was sent at once, so every
answer comes back at once), each task gets one step per round: they all finish near the
end of the wave, their slots free together, and the next requests go out together. The
wave keeps its shape forever, and the event loop idles a whole upstream latency between
waves (P12: 1.5 s of a 2 s cycle spent on 2,000 answers, then nothing to do).

How
---
A network backend for httpcore whose streams take a *turn* (a FIFO semaphore of
``turns``) when data has arrived, before the task parses it, and give it back before
waiting on the network again; the dispatcher gives back a turn still held once the
answer is read (``end_turn``). So at most ``turns`` answers are in the middle of their
processing, the first to arrive finish first, their slots refill at once, and the next
requests go out while the rest of the wave is still being processed: the waves smear
and the event loop stays busy. A task never waits for a turn while holding one, and a
holder waits on nothing but its own network reads (which give the turn back), so turns
cannot deadlock. Sending takes no turn; a request's writes go out together at its first
read (``FairStream``).
"""

# ruff: noqa: ASYNC109 (the timeout parameters are httpcore's interface, passed through)

from __future__ import annotations

import contextlib
import contextvars
import ssl
import typing

import anyio
import httpcore
import sniffio

# Whether the current task holds a turn (a task reads one answer at a time).
_HOLDS: contextvars.ContextVar[bool] = contextvars.ContextVar("fusillade_turn", default=False)


class Turns:
    """At most ``n`` answers being processed at once, first come first served."""

    def __init__(self, n: int) -> None:
        self.total = n
        self._sem = anyio.Semaphore(n, fast_acquire=True)

    @property
    def free(self) -> int:
        return self._sem.value

    async def begin(self) -> None:
        if not _HOLDS.get():
            await self._sem.acquire()
            _HOLDS.set(True)

    def end(self) -> None:
        if _HOLDS.get():
            _HOLDS.set(False)
            self._sem.release()


class FairStream(httpcore.AsyncNetworkStream):
    """A stream whose reads take turns (module docstring), and whose writes are sent in
    one piece before the next read: httpcore writes a request's headers, body and end
    separately and reads the answer only once all are written, so the request goes out
    in one system call instead of two or three (each about 0.1 ms of CPU on loopback)."""

    def __init__(self, inner: httpcore.AsyncNetworkStream, turns: Turns) -> None:
        self._inner = inner
        self._turns = turns
        self._unsent: list[bytes] = []
        self._write_timeout: float | None = None

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        self._turns.end()  # never wait on the network holding a turn
        if self._unsent:
            data, self._unsent = b"".join(self._unsent), []
            # As httpcore does with a write error while sending a request: read anyway,
            # the upstream may have answered before closing (a 413 for a huge body);
            # if not, the read fails too and says so.
            with contextlib.suppress(httpcore.WriteError):
                await self._inner.write(data, self._write_timeout)
        data = await self._inner.read(max_bytes, timeout)
        await self._turns.begin()
        return data

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if buffer:
            self._unsent.append(buffer)
            self._write_timeout = timeout

    async def aclose(self) -> None:
        self._unsent = []
        await self._inner.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        inner = await self._inner.start_tls(ssl_context, server_hostname, timeout)
        return FairStream(inner, self._turns)

    def get_extra_info(self, info: str) -> typing.Any:
        return self._inner.get_extra_info(info)


class FairBackend(httpcore.AsyncNetworkBackend):
    """httpcore's own backend for the running event loop (trio's, else anyio's), its
    streams wrapped in ``FairStream``."""

    def __init__(self, turns: Turns) -> None:
        self.turns = turns
        self._inner: httpcore.AsyncNetworkBackend | None = None

    def _backend(self) -> httpcore.AsyncNetworkBackend:
        if self._inner is None:
            trio = sniffio.current_async_library() == "trio"
            self._inner = httpcore.TrioBackend() if trio else httpcore.AnyIOBackend()
        return self._inner

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[typing.Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        inner = await self._backend().connect_tcp(
            host, port, timeout=timeout, local_address=local_address, socket_options=socket_options
        )
        return FairStream(inner, self.turns)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: typing.Iterable[typing.Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        inner = await self._backend().connect_unix_socket(
            path, timeout=timeout, socket_options=socket_options
        )
        return FairStream(inner, self.turns)

    async def sleep(self, seconds: float) -> None:
        await self._backend().sleep(seconds)
