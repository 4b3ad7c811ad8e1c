"""What puts a request's bytes on the wire, measured (issue 16, item 2): a microbenchmark.

    python -m benchmarks.senders --requests 20000 --slots 256 [--processes 1 2] [--tls]

Not a harness scenario: no database, no daemon. The harness's zero-latency nginx upstream
(``benchmarks.upstream``) answers the same POST of a small JSON body, and ``--slots``
trio tasks send ``--requests`` requests through each candidate sender:

- ``fusillade``: today's dispatch path, the real ``Dispatcher.send`` (httpcore pools of
  ``connections_per_client`` connections, the fair-reads backend, the outcome as the
  daemon records it); ``fusillade-1``: the same with ``connections_per_client = 1``;
- ``httpcore-N``: httpcore's ``AsyncConnectionPool`` directly, shards of N connections,
  its own backend (no fair reads), tuned as far as its API goes;
- ``h11``: a minimal HTTP/1.1 keep-alive pool on trio streams with h11 as the parser
  (httpcore's own parser, without httpcore): what httpcore's layers cost;
- ``httptools``: the same pool on anyio streams (trio backend) with httptools' C
  response parser (content-length and chunked); the request bytes are built once per
  request; ``httptools-trio``: the same on trio's streams directly (anyio's layer's cost);
- ``pycurl``: libcurl's multi interface in one dedicated thread (which releases the GIL
  inside libcurl); requests handed over through a queue and a wake-up pipe, answers
  handed back to trio in batches (``run_sync_soon``);
- ``floor``: no network at all, the rest of the work above (headers built, the canned
  answer turned into a ``Sent``): what no sender can save.

Every candidate sends the headers ``Dispatcher.build`` makes for the request and turns
the answer into the same ``Sent`` (``_outcome``), so what differs is only the sender.
Each measurement runs in a fresh child process (a warm-up, then the timed part); the
candidates run interleaved (A B C D, A B C D, ...), and the report gives medians of the
rounds, req/s, the CPU seconds per 1,000 requests of the child (``getrusage``
RUSAGE_SELF, every thread), and the ratio to ``fusillade`` in the same round. The load
average is printed with every round: the machine may be shared. ``--processes 1 2``
repeats it all with the requests and slots split over 2 processes at once.

``--tls``: the same nginx over TLS, with a self-signed certificate every candidate is
told to trust. The prototypes have no proxies and no error classification: they measure
the cost of putting bytes on the wire. ``benchmarks.sender_faults`` shows how each
reports faults. Results and the choice: docs/performance.md, "Issue 16: the sender".
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import queue
import resource
import select
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trio

from benchmarks.common import ENDPOINT, MODEL, REPO_ROOT, request_body

CANDIDATES = (
    "fusillade",
    "fusillade-1",
    "httpcore-1",
    "httpcore-4",
    "httpcore-16",
    "h11",
    "httptools",
    "httptools-trio",
    "pycurl",
    "floor",
)
WARMUP = 1000
# --tls: the CA file of the upstream's self-signed certificate (set in the child)
CAFILE: str | None = None
_TLS: list[ssl.SSLContext] = []


def _tls() -> ssl.SSLContext | None:
    """One client TLS context trusting the benchmark's CA (one per process, as today)."""
    if CAFILE is None:
        return None
    if not _TLS:
        _TLS.append(ssl.create_default_context(cafile=CAFILE))
    return _TLS[0]


Exchange = tuple[int, list[tuple[bytes, bytes]], bytes]


# --- the requests, built as the daemon builds them --------------------------------------


def _requests(base_url: str, n: int) -> list[Any]:
    from fusillade.core.attempts import ClaimedRequest

    now = datetime.now(UTC)
    batch = uuid.uuid4()
    daemon = uuid.uuid4()
    return [
        ClaimedRequest(
            id=uuid.uuid4(),
            batch_id=batch,
            attempt=1,
            budget_used=0,
            model=MODEL,
            batch_expires_at=now,
            custom_id=f"req-{i:08d}",
            endpoint=base_url,
            method="POST",
            path=ENDPOINT,
            body=request_body(i),
            daemon_id=daemon,
            claimed_at=now,
            started_at=now,
            not_before=now,
        )
        for i in range(n)
    ]


def _check(sent: Any) -> None:
    from fusillade.core.retry import HttpResponse

    if not (isinstance(sent.outcome, HttpResponse) and sent.outcome.status == 200):
        raise SystemExit(f"unexpected outcome: {sent.outcome!r}")
    if sent.input_tokens != 12:
        raise SystemExit(f"usage not parsed: {sent!r}")


async def _drive(send: Callable[[int, Any], Awaitable[None]], reqs: list[Any], slots: int) -> None:
    """``slots`` tasks, each sending the next request until none is left."""
    it = iter(range(len(reqs)))

    async def worker(slot: int) -> None:
        for i in it:
            await send(slot, reqs[i])

    async with trio.open_nursery() as nursery:
        for slot in range(slots):
            nursery.start_soon(worker, slot)


# --- (a) today's dispatch path ----------------------------------------------------------


async def _run_fusillade(base_url: str, n: int, slots: int, per: int) -> tuple[float, float]:
    from fusillade.runtime.config import DaemonConfig
    from fusillade.runtime.dispatch import Dispatcher

    async with Dispatcher(DaemonConfig(connections_per_client=per)) as dispatcher:
        dispatcher._tls = _tls() or dispatcher._tls  # --tls: trust the benchmark's CA

        async def send(slot: int, req: Any) -> None:
            _check(await dispatcher.send(req))

        return await _timed(send, base_url, n, slots)


async def _timed(
    send: Callable[[int, Any], Awaitable[None]], base: str, n: int, s: int
) -> tuple[float, float]:
    """Wall and CPU seconds (the process's, every thread) of sending ``n`` requests,
    after a warm-up that opens the connections."""
    await _drive(send, _requests(base, min(WARMUP, n)), s)
    reqs = _requests(base, n)
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    await _drive(send, reqs, s)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def _builder() -> tuple[Any, Callable[..., Any]]:
    """``Dispatcher.build`` (headers as the daemon sends them) and ``_outcome`` plus the
    header decoding (the ``Sent`` the daemon records), for the other candidates."""
    from fusillade.runtime.config import DaemonConfig
    from fusillade.runtime.dispatch import Dispatcher, _header_dict, _outcome

    dispatcher = Dispatcher(DaemonConfig())

    def outcome(status: int, raw: list[tuple[bytes, bytes]], body: bytes) -> Any:
        return _outcome(status, _header_dict(raw), body)

    return dispatcher, outcome


async def _run_floor(base_url: str, n: int, slots: int, per: int) -> tuple[float, float]:
    """No network: the headers built and a canned answer turned into a ``Sent``, with a
    checkpoint per request. What every candidate costs besides its sender."""
    from benchmarks.common import CANNED_COMPLETION

    dispatcher, outcome = _builder()
    raw = [(b"Server", b"nginx"), (b"Content-Type", b"application/json")]
    answer = CANNED_COMPLETION.encode()

    async def send(slot: int, req: Any) -> None:
        _url, _headers = dispatcher.build(req)
        req.body.encode()
        await trio.lowlevel.checkpoint()
        _check(outcome(200, raw, answer))

    return await _timed(send, base_url, n, slots)


# --- (b) tuned httpcore -----------------------------------------------------------------


async def _run_httpcore(base_url: str, n: int, slots: int, per: int) -> tuple[float, float]:
    import httpcore
    import httpx

    dispatcher, outcome = _builder()
    url0 = httpx.URL(base_url + ENDPOINT)
    target = httpcore.URL(
        scheme=url0.raw_scheme, host=url0.raw_host, port=url0.port, target=url0.raw_path
    )
    host = url0.netloc
    timeouts = {"connect": 10.0, "read": 600.0, "write": 600.0, "pool": None}
    # slot i always uses pool i // per: a task sends one request at a time, so a pool
    # never has more requests than connections (as the dispatcher's shards)
    pools = [
        httpcore.AsyncConnectionPool(
            ssl_context=_tls(), max_connections=per, max_keepalive_connections=per
        )
        for _ in range((slots + per - 1) // per)
    ]

    async def send(slot: int, req: Any) -> None:
        _url, headers = dispatcher.build(req)
        content = req.body.encode()
        raw = [(b"Host", host)]
        raw += [(k.encode("ascii"), v.encode("ascii")) for k, v in headers.items()]
        raw.append((b"Content-Length", str(len(content)).encode("ascii")))
        with trio.move_on_after(600):
            response = await pools[slot // per].handle_async_request(
                httpcore.Request(
                    b"POST", target, headers=raw, content=content, extensions={"timeout": timeouts}
                )
            )
            try:
                body = await response.aread()
            finally:
                await response.aclose()
        _check(outcome(response.status, response.headers, body))

    try:
        return await _timed(send, base_url, n, slots)
    finally:
        for pool in pools:
            await pool.aclose()


# --- (c) HTTP/1.1 pool on anyio streams with httptools' parser --------------------------


class _Answer:
    """httptools' callbacks for one response."""

    __slots__ = ("body", "done", "headers", "keep", "parser")

    def __init__(self) -> None:
        import httptools

        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.done = False
        self.keep = False
        self.parser = httptools.HttpResponseParser(self)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, data: bytes) -> None:
        self.body.append(data)

    def on_message_complete(self) -> None:
        # asked here: once the message is complete, the parser's state is the next one's
        self.keep = self.parser.should_keep_alive()
        self.done = True


class H1Pool:
    """Keep-alive HTTP/1.1 connections to one host: an idle stack, a new connection
    when none is idle, one request at a time on each. Errors close the connection.
    ``raw_trio``: trio's streams directly instead of anyio's (what anyio's layer costs)."""

    def __init__(
        self, host: str, port: int, connect_timeout: float, *, raw_trio: bool = False
    ) -> None:
        self.host, self.port = host, port
        self.connect_timeout = connect_timeout
        self.raw_trio = raw_trio
        self.idle: list[Any] = []

    async def _connect(self) -> Any:
        if self.raw_trio:
            with trio.fail_after(self.connect_timeout):
                return await _trio_connect(self.host, self.port)
        import anyio

        with anyio.fail_after(self.connect_timeout):
            tls = _tls()
            if tls is None:
                return await anyio.connect_tcp(self.host, self.port)
            return await anyio.connect_tcp(
                self.host, self.port, ssl_context=tls, tls_standard_compatible=False
            )

    async def exchange(self, head: bytes, body: bytes, read_timeout: float) -> Exchange:
        stream = self.idle.pop() if self.idle else await self._connect()
        keep = False
        try:
            answer = _Answer()
            parser = answer.parser
            # trio's and anyio's cancel scopes are the same thing under trio
            with trio.fail_after(read_timeout):
                if self.raw_trio:
                    await stream.send_all(head + body)
                    while not answer.done:
                        data = await stream.receive_some(65536)
                        if not data:
                            raise EOFError("connection closed")
                        parser.feed_data(data)
                else:
                    await stream.send(head + body)
                    while not answer.done:
                        parser.feed_data(await stream.receive(65536))
            keep = answer.keep
            return parser.get_status_code(), answer.headers, b"".join(answer.body)
        finally:
            if keep:
                self.idle.append(stream)
            else:
                await stream.aclose()

    async def aclose(self) -> None:
        for stream in self.idle:
            await stream.aclose()
        self.idle.clear()


async def _trio_connect(host: str, port: int) -> Any:
    tls = _tls()
    if tls is None:
        return await trio.open_tcp_stream(host, port)
    stream = await trio.open_ssl_over_tcp_stream(host, port, ssl_context=tls)
    await stream.do_handshake()
    return stream


class H11Pool:
    """The same pool with h11 (pure Python, what httpcore uses) as the parser: (e)."""

    def __init__(self, host: str, port: int, target: bytes, host_header: bytes) -> None:
        self.host, self.port = host, port
        self.target, self.host_header = target, host_header
        self.idle: list[tuple[Any, Any]] = []

    async def exchange(self, headers: list[tuple[bytes, bytes]], body: bytes) -> Exchange:
        import h11

        if self.idle:
            stream, conn = self.idle.pop()
        else:
            stream = await _trio_connect(self.host, self.port)
            conn = h11.Connection(h11.CLIENT)
        keep = False
        try:
            out = conn.send(h11.Request(method=b"POST", target=self.target, headers=headers))
            out += conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
            await stream.send_all(out)
            status, raw, chunks = 0, [], []
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                elif isinstance(event, h11.Response):
                    status, raw = event.status_code, list(event.headers)
                elif isinstance(event, h11.Data):
                    chunks.append(bytes(event.data))
                elif isinstance(event, h11.EndOfMessage):
                    break
            if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                conn.start_next_cycle()
                keep = True
            return status, raw, b"".join(chunks)
        finally:
            if keep:
                self.idle.append((stream, conn))
            else:
                await stream.aclose()

    async def aclose(self) -> None:
        for stream, _conn in self.idle:
            await stream.aclose()
        self.idle.clear()


async def _run_h11(base_url: str, n: int, slots: int, per: int) -> tuple[float, float]:
    import httpx

    dispatcher, outcome = _builder()
    url0 = httpx.URL(base_url + ENDPOINT)
    pool = H11Pool(url0.host, url0.port or 80, url0.raw_path, url0.netloc)

    async def send(slot: int, req: Any) -> None:
        _url, headers = dispatcher.build(req)
        content = req.body.encode()
        raw = [(b"Host", pool.host_header)]
        raw += [(k.encode("ascii"), v.encode("ascii")) for k, v in headers.items()]
        raw.append((b"Content-Length", str(len(content)).encode("ascii")))
        with trio.fail_after(600):
            status, rh, body = await pool.exchange(raw, content)
        _check(outcome(status, rh, body))

    try:
        return await _timed(send, base_url, n, slots)
    finally:
        await pool.aclose()


async def _run_httptools(base_url: str, n: int, slots: int, per: int) -> tuple[float, float]:
    import httpx

    dispatcher, outcome = _builder()
    url0 = httpx.URL(base_url + ENDPOINT)
    pool = H1Pool(url0.host, url0.port or 80, 10.0, raw_trio=per == 1)
    request_line = b"POST " + url0.raw_path + b" HTTP/1.1\r\nHost: " + url0.netloc + b"\r\n"

    async def send(slot: int, req: Any) -> None:
        _url, headers = dispatcher.build(req)
        content = req.body.encode()
        head = (
            request_line
            + "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode("ascii")
            + b"Content-Length: "
            + str(len(content)).encode("ascii")
            + b"\r\n\r\n"
        )
        status, raw, body = await pool.exchange(head, content, 600.0)
        _check(outcome(status, raw, body))

    try:
        return await _timed(send, base_url, n, slots)
    finally:
        await pool.aclose()


# --- (d) pycurl's multi interface in a dedicated thread ---------------------------------


class CurlThread:
    """libcurl's multi interface driven by one thread. ``submit`` hands a request over
    (a queue and a byte on a wake-up pipe); the thread hands finished ones back to trio
    in batches through ``run_sync_soon``, each waking its task's event. A prototype:
    ``select`` up to 1,000 connections, libcurl's ``socket_action`` on epoll from there
    (``select`` takes descriptors below 1,024 only); a cancelled task leaves its transfer
    running, and the epoll loop only fires libcurl's timer when no socket is ready."""

    def __init__(self, token: trio.lowlevel.TrioToken, max_connections: int) -> None:
        import pycurl

        self.pycurl = pycurl
        self.token = token
        self.multi = pycurl.CurlMulti()
        self.multi.setopt(pycurl.M_MAXCONNECTS, max_connections)
        self.inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        self.free: list[Any] = []
        self.stopping = False
        # past select's 1,024 descriptors: libcurl's socket_action interface on epoll
        self.epoll = max_connections >= 1000
        loop = self._loop_epoll if self.epoll else self._loop
        self.thread = threading.Thread(target=loop, name="curl", daemon=True)
        self.thread.start()

    def _handle(self) -> Any:
        if self.free:
            return self.free.pop()
        pc = self.pycurl
        c = pc.Curl()
        c.setopt(pc.NOSIGNAL, 1)
        c.setopt(pc.FOLLOWLOCATION, 0)
        c.setopt(pc.PROXY, "")  # no proxy from the environment; config would set it
        c.setopt(pc.CONNECTTIMEOUT_MS, 10_000)
        c.setopt(pc.TIMEOUT_MS, 600_000)
        c.setopt(pc.ACCEPT_ENCODING, None)  # as sent today: no Accept-Encoding added
        if CAFILE is not None:
            c.setopt(pc.CAINFO, CAFILE)
        return c

    async def exchange(self, url: str, headers: list[str], body: bytes) -> Exchange:
        job = _CurlJob(url, headers, body)
        self.inbox.put(job)
        os.write(self.wake_w, b"x")
        await job.event.wait()
        if job.error is not None:
            raise job.error
        return job.status, job.headers, b"".join(job.body)

    def _start(self, job: _CurlJob) -> None:
        pc = self.pycurl
        c = self._handle()
        c.setopt(pc.URL, job.url)
        c.setopt(pc.HTTPHEADER, job.header_lines)
        c.setopt(pc.POSTFIELDS, job.payload)
        c.setopt(pc.WRITEFUNCTION, job.body.append)
        c.setopt(pc.HEADERFUNCTION, job.header_line)
        c.job = job
        self.multi.add_handle(c)

    def _loop(self) -> None:
        multi = self.multi
        while not self.stopping:
            done: list[_CurlJob] = []
            while True:
                try:
                    self._start(self.inbox.get_nowait())
                except queue.Empty:
                    break
            while True:
                ret, _running = multi.perform()
                if ret != self.pycurl.E_CALL_MULTI_PERFORM:
                    break
            while True:
                queued, ok, failed = multi.info_read()
                for c in ok:
                    c.job.status = c.getinfo(self.pycurl.RESPONSE_CODE)
                    done.append(self._finish(c))
                for c, errno, message in failed:
                    c.job.error = RuntimeError(f"curl error {errno}: {message}")
                    done.append(self._finish(c))
                if not queued:
                    break
            if done:
                self.token.run_sync_soon(_wake_all, done)
            reads, writes, errs = multi.fdset()
            timeout = multi.timeout()
            wait = 1.0 if timeout < 0 else min(timeout / 1000, 1.0)
            if done or not self.inbox.empty():
                wait = 0
            r, _w, _x = select.select([*reads, self.wake_r], writes, errs, wait)
            if self.wake_r in r:
                with contextlib.suppress(BlockingIOError):
                    os.read(self.wake_r, 65536)

    def _collect(self, done: list[_CurlJob]) -> None:
        while True:
            queued, ok, failed = self.multi.info_read()
            for c in ok:
                c.job.status = c.getinfo(self.pycurl.RESPONSE_CODE)
                done.append(self._finish(c))
            for c, errno, message in failed:
                c.job.error = RuntimeError(f"curl error {errno}: {message}")
                done.append(self._finish(c))
            if not queued:
                break

    def _loop_epoll(self) -> None:
        """The same with libcurl telling which sockets to watch (``M_SOCKETFUNCTION``)
        and when to call back (``M_TIMERFUNCTION``): no per-loop scan of every socket."""
        pc, multi = self.pycurl, self.multi
        ep = select.epoll()
        ep.register(self.wake_r, select.EPOLLIN)
        watched: set[int] = set()
        timer = [-1]
        masks = {
            pc.POLL_IN: select.EPOLLIN,
            pc.POLL_OUT: select.EPOLLOUT,
            pc.POLL_INOUT: select.EPOLLIN | select.EPOLLOUT,
        }

        def on_socket(event: int, fd: int, _multi: Any, _data: Any) -> None:
            if event == pc.POLL_REMOVE:
                if fd in watched:
                    watched.discard(fd)
                    with contextlib.suppress(OSError):
                        ep.unregister(fd)
            elif fd in watched:
                ep.modify(fd, masks[event])
            else:
                watched.add(fd)
                ep.register(fd, masks[event])

        def on_timer(ms: int) -> None:
            timer[0] = ms

        multi.setopt(pc.M_SOCKETFUNCTION, on_socket)
        multi.setopt(pc.M_TIMERFUNCTION, on_timer)
        while not self.stopping:
            done: list[_CurlJob] = []
            wait = -1.0 if timer[0] < 0 else timer[0] / 1000
            events = ep.poll(wait)
            for fd, mask in events:
                if fd == self.wake_r:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self.wake_r, 65536)
                    continue
                flags = 0
                if mask & select.EPOLLIN:
                    flags |= pc.CSELECT_IN
                if mask & select.EPOLLOUT:
                    flags |= pc.CSELECT_OUT
                if mask & (select.EPOLLERR | select.EPOLLHUP):
                    flags |= pc.CSELECT_ERR
                multi.socket_action(fd, flags)
            while True:
                try:
                    self._start(self.inbox.get_nowait())
                except queue.Empty:
                    break
            if not events or timer[0] == 0:
                timer[0] = -1
                multi.socket_action(pc.SOCKET_TIMEOUT, 0)
            self._collect(done)
            if done:
                self.token.run_sync_soon(_wake_all, done)
        ep.close()

    def _finish(self, c: Any) -> _CurlJob:
        job: _CurlJob = c.job
        self.multi.remove_handle(c)
        c.job = None
        self.free.append(c)
        return job

    def close(self) -> None:
        self.stopping = True
        os.write(self.wake_w, b"x")
        self.thread.join()
        for c in self.free:
            c.close()
        self.multi.close()
        os.close(self.wake_r)
        os.close(self.wake_w)


class _CurlJob:
    __slots__ = ("body", "error", "event", "header_lines", "headers", "payload", "status", "url")

    def __init__(self, url: str, header_lines: list[str], payload: bytes) -> None:
        self.url = url
        self.header_lines = header_lines
        self.payload = payload
        self.event = trio.Event()
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.error: Exception | None = None

    def header_line(self, line: bytes) -> None:
        name, sep, value = line.partition(b":")
        if sep:
            self.headers.append((name, value.strip()))
        elif line.startswith(b"HTTP/"):
            self.headers.clear()  # a 100 Continue's or an earlier response's


def _wake_all(jobs: list[_CurlJob]) -> None:
    for job in jobs:
        job.event.set()


async def _run_pycurl(base_url: str, n: int, slots: int, per: int) -> tuple[float, float]:
    dispatcher, outcome = _builder()
    curl = CurlThread(trio.lowlevel.current_trio_token(), slots)
    url = base_url + ENDPOINT

    async def send(slot: int, req: Any) -> None:
        _url, headers = dispatcher.build(req)
        # libcurl adds Host and Content-Length; "Expect:" stops its 100-continue (large
        # bodies), "Accept:" its default "Accept: */*"
        lines = [f"{k}: {v}" for k, v in headers.items()] + ["Expect:", "Accept:"]
        status, raw, body = await curl.exchange(url, lines, req.body.encode())
        _check(outcome(status, raw, body))

    try:
        return await _timed(send, base_url, n, slots)
    finally:
        curl.close()


# --- child and parent -------------------------------------------------------------------


def _runner(name: str) -> tuple[Callable[..., Awaitable[tuple[float, float]]], int]:
    if name == "fusillade":
        return _run_fusillade, 4
    if name == "floor":
        return _run_floor, 0
    if name == "fusillade-1":
        return _run_fusillade, 1
    if name.startswith("httpcore-"):
        return _run_httpcore, int(name.removeprefix("httpcore-"))
    if name == "httptools":
        return _run_httptools, 0
    if name == "httptools-trio":
        return _run_httptools, 1  # "per" 1: trio's streams directly
    if name == "h11":
        return _run_h11, 0
    if name == "pycurl":
        return _run_pycurl, 0
    raise SystemExit(f"unknown candidate {name!r}")


def child(name: str, url: str, n: int, slots: int) -> None:
    global CAFILE
    CAFILE = os.environ.get("SENDERS_CAFILE")
    run, per = _runner(name)
    wall, cpu = trio.run(run, url, n, slots, per)
    print(json.dumps({"name": name, "n": n, "wall": wall, "cpu": cpu}), flush=True)


def missing(name: str) -> str | None:
    module = {"httptools": "httptools", "httptools-trio": "httptools", "pycurl": "pycurl"}.get(name)
    if module is None:
        return None
    try:
        __import__(module)
    except ImportError:
        return f"not measured: {module} not installed (pip install 'fusillade[bench]')"
    return None


def spawn(name: str, url: str, n: int, slots: int) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    cmd = [sys.executable, "-m", "benchmarks.senders", "--child", name, "--url", url]
    cmd += ["--requests", str(n), "--slots", str(slots)]
    return subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, text=True)


def measure(name: str, url: str, n: int, slots: int, processes: int) -> dict[str, float]:
    """One measurement: ``processes`` children at once sharing ``n`` and ``slots``."""
    procs = [spawn(name, url, n // processes, slots // processes) for _ in range(processes)]
    rows = []
    for proc in procs:
        out, _ = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"{name}: child failed ({proc.returncode})")
        rows.append(json.loads(out.strip().splitlines()[-1]))
    done = sum(r["n"] for r in rows)
    wall = max(r["wall"] for r in rows)
    cpu = sum(r["cpu"] for r in rows)
    return {"rps": done / wall, "cpu_per_1k": cpu / done * 1000}


TLS_CONF = """\
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
{user}
events {{ worker_connections 8192; }}
http {{
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 600s;
    default_type application/json;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {tmp}/cert.pem;
        ssl_certificate_key {tmp}/key.pem;
        location / {{ return 200 '{body}'; }}
    }}
}}
"""


@contextlib.contextmanager
def tls_upstream() -> Iterator[str]:
    """The same zero-latency nginx over TLS with a self-signed certificate for 127.0.0.1
    (``SENDERS_CAFILE`` tells the children to trust it): its base URL."""
    from benchmarks.common import CANNED_COMPLETION, free_port, stop_and_reap, wait_for_port
    from benchmarks.upstream import nginx_binary

    binary = nginx_binary()
    if binary is None or shutil.which("openssl") is None:
        raise SystemExit("--tls needs nginx and openssl on PATH")
    with tempfile.TemporaryDirectory(prefix="fusillade-senders-tls-") as tmp:
        subprocess.run(
            [
                *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
                *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
                *("-keyout", f"{tmp}/key.pem", "-out", f"{tmp}/cert.pem"),
            ],
            check=True,
            capture_output=True,
        )
        port = free_port()
        user = "user root;" if os.geteuid() == 0 else ""
        conf = TLS_CONF.format(tmp=tmp, user=user, port=port, body=CANNED_COMPLETION)
        Path(tmp, "nginx.conf").write_text(conf)
        proc = subprocess.Popen(
            [binary, "-p", tmp, "-c", f"{tmp}/nginx.conf", "-e", f"{tmp}/error.log"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for_port(port, 15, proc)
            os.environ["SENDERS_CAFILE"] = f"{tmp}/cert.pem"
            yield f"https://127.0.0.1:{port}"
        finally:
            os.environ.pop("SENDERS_CAFILE", None)
            stop_and_reap(proc)


def versions() -> str:
    out = [f"Python {platform.python_version()}"]
    for dist in ("trio", "anyio", "httpx", "httpcore", "h11", "httptools"):
        try:
            out.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            out.append(f"{dist} missing")
    try:
        import pycurl

        out.append(pycurl.version.split()[0] + " " + pycurl.version.split()[1])
    except ImportError:
        out.append("pycurl missing")
    return ", ".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--slots", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--processes", type=int, nargs="+", default=[1])
    ap.add_argument("--only", nargs="+", choices=CANDIDATES, default=list(CANDIDATES))
    ap.add_argument("--tls", action="store_true", help="nginx over TLS (self-signed)")
    ap.add_argument("--latency", type=float, default=0.0, help="nginx echo_sleep (P12's shape)")
    ap.add_argument("--child")
    ap.add_argument("--url")
    args = ap.parse_args()
    if args.child:
        child(args.child, args.url, args.requests, args.slots)
        return

    from benchmarks.upstream import upstreams

    names = [n for n in args.only if not missing(n)]
    for n in args.only:
        if reason := missing(n):
            print(f"{n}: {reason}")
    print(versions())
    with contextlib.ExitStack() as stack:
        if args.tls:
            url = stack.enter_context(tls_upstream())
            kind = "nginx over TLS (self-signed, TLS 1.3 where both ends have it)"
        else:
            up = stack.enter_context(upstreams([args.latency] if args.latency else []))
            url = up.slow_url(args.latency) if args.latency else up.fast
            kind = up.describe(url)
        print(f"upstream: {kind} at {url}; {args.requests} requests, {args.slots} slots")
        for procs in args.processes:
            results: dict[str, list[dict[str, float]]] = {n: [] for n in names}
            for rnd in range(args.rounds):
                load = os.getloadavg()
                print(f"round {rnd + 1}, {procs} process(es), load {load[0]:.2f} {load[1]:.2f}")
                for name in names:
                    row = measure(name, url, args.requests, args.slots, procs)
                    results[name].append(row)
                    print(f"  {name:12} {row['rps']:8.0f} req/s {row['cpu_per_1k']:6.3f} cpu s/1k")
            load = os.getloadavg()
            print(f"\nmedians of {args.rounds}, {procs} process(es) (load now {load[0]:.2f}):")
            print("| sender | req/s | vs fusillade (same round) | CPU s / 1,000 requests |")
            print("|---|---|---|---|")
            base = results.get("fusillade")
            for name in names:
                rows = results[name]
                rps = statistics.median(r["rps"] for r in rows)
                cpu = statistics.median(r["cpu_per_1k"] for r in rows)
                ratio = "-"
                if base:
                    ratios = [r["rps"] / b["rps"] for r, b in zip(rows, base, strict=True)]
                    ratio = f"{statistics.median(ratios):.2f}x"
                print(f"| {name} | {rps:,.0f} | {ratio} | {cpu:.3f} |")
            print()


if __name__ == "__main__":
    main()
