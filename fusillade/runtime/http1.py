"""The httptools sender: keep-alive HTTP/1.1 connections on anyio streams, answers parsed
by httptools' C parser (llhttp). The default ``[daemon] sender``; ``"httpcore"`` selects
the sharded httpcore pools instead (dispatch.py).

Why
---
Measured against today's httpcore pools (docs/performance.md, "Issue 16: the sender"),
this pool sent 4.3 times the requests per second at a quarter of the CPU per request:
httpcore's h11 parser and its per-request bookkeeping are most of a request's CPU. It
runs in the event loop, so cancellation and timeouts are anyio's, as before.

How
---
One ``Pool`` per (scheme, host, port). A request takes the most recently used idle
connection (LIFO: the warmest; the oldest expire first), else opens one; so a pool never
holds more connections than requests were in flight at once, which the daemon's
concurrency bounds. The request goes out in one write (head and body built together);
the answer is parsed as it arrives: a ``Content-Length`` body, a chunked one, or one
that lasts until the server closes (neither: HTTP/1.0 answers). A connection is reused
only when the answer was complete and the server keeps it alive (``Connection: close``
and HTTP/1.0 say it does not); one whose exchange failed or was cancelled is closed.

A server closes idle keep-alive connections when it likes. As httpcore does, an idle
connection is checked before reuse: one idle for longer than ``keepalive_expiry``, or
whose socket is readable (the server's FIN, or bytes nobody asked for), is closed and
another taken. There is no retry after a request was written: like httpcore, a server
that closes a reused connection at the moment the request arrives gives "disconnected
without sending a response" (a protocol error, retried by the retry policy, which may
have processed the request: the ``Idempotency-Key`` header is for that).

Failures are raised as httpcore's exceptions, the ones today's sender raises for the same
fault, so ``dispatch._translate`` gives the same ``TransportErrorKind`` and message
(tests/runtime/test_dispatch_senders.py checks each fault through both senders): a refused or
failed connection (TLS handshake included) is ``ConnectError``, connecting for longer
than the connect timeout ``ConnectTimeout``, a broken connection while reading
``ReadError``, a connection closed before the answer or in the middle of its body, or
bytes that are not HTTP, ``RemoteProtocolError``. Reads and writes have no timeout of
their own: today's equal the whole request's, which the dispatcher applies around the
exchange and which always ends first.

Answers take turns as httpcore's streams do (``fair_reads.py``): the turn is given back
before each wait on the network and taken when data has arrived.

Through a proxy (``[daemon] proxy``, an ``http://`` URL; docs/configuration.md): a plain
HTTP request goes to the proxy in absolute form (``POST http://host:port/path``) with its
``Proxy-Authorization``; an HTTPS one through a ``CONNECT`` tunnel, then TLS with the
upstream inside it, so the proxy sees neither the request nor the api key. Hosts in
``no_proxy`` are reached directly. A proxy that refuses the tunnel is ``ProxyError``, one
that cannot be reached ``ConnectError``, as with httpcore's proxy pools.
"""

from __future__ import annotations

import base64
import contextlib
import select
import socket
import ssl
import time
from collections.abc import Callable
from urllib.parse import unquote, urlsplit

import anyio
import anyio.abc
import httpcore
import httptools
from anyio.streams.tls import TLSStream

from fusillade.runtime.fair_reads import Turns

_READ_SIZE = 65536
_DEFAULT_PORTS = {b"http": 80, b"https": 443}

Answer = tuple[int, list[tuple[bytes, bytes]], bytes]


class _Response:
    """httptools' callbacks for one answer (informational 1xx answers are skipped)."""

    __slots__ = ("body", "done", "headers", "keep", "parser", "started", "status")

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.status = 0
        self.started = False  # a byte of the answer arrived
        self.done = False
        self.keep = False
        self.parser = httptools.HttpResponseParser(self)

    def on_message_begin(self) -> None:
        if self.done:  # bytes after the answer (nothing was asked): never reuse
            self.keep = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, data: bytes) -> None:
        self.body.append(data)

    def on_message_complete(self) -> None:
        if self.done:
            return
        if self.status == 101:  # 101 Switching Protocols, never asked for
            raise httpcore.RemoteProtocolError("unexpected protocol switch")
        if 100 <= self.status < 200:
            self.headers = []  # 100 Continue, 103 Early Hints: the answer is next
            return
        # asked here: once the message is complete, the parser's state is the next one's
        self.keep = self.parser.should_keep_alive()
        self.done = True

    def until_eof(self) -> bool:
        """Whether the body lasts until the server closes (no length, not chunked)."""
        if not self.status or self.done:
            return False
        for name, value in self.headers:
            lowered = name.lower()
            if lowered == b"content-length":
                return False
            if lowered == b"transfer-encoding" and b"chunked" in value.lower():
                return False
        return True


class _Conn:
    """A connection, its socket (asked once: anyio builds a dict of attributes each
    time) and since when it is idle."""

    __slots__ = ("since", "sock", "stream")

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self.stream = stream
        self.sock: socket.socket | None = stream.extra(anyio.abc.SocketAttribute.raw_socket, None)
        self.since = 0.0


def _readable(sock: socket.socket | None) -> bool:
    """Whether an idle connection's socket has something to read: the server closed it
    (or sent bytes nobody asked for). httpcore checks the same before reuse."""
    if sock is None or sock.fileno() < 0:
        return True
    try:
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):  # no poll (Windows): select
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable)


async def _discard(stream: anyio.abc.ByteStream) -> None:
    """Close without waiting on the network (a TLS stream sends no close_notify)."""
    await anyio.aclose_forcefully(stream)


class Proxy:
    """An HTTP proxy: where it is, the ``Proxy-Authorization`` of its URL's user and
    password, and the hosts reached without it (``no_proxy``: ``*``, a host, a domain and
    its subdomains, optionally ``:port``)."""

    __slots__ = ("authorization", "bypass", "host", "port")

    def __init__(self, url: str, no_proxy: tuple[str, ...] = ()) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"a proxy must be an http:// URL with a host, got {parts.scheme}://")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.authorization: bytes | None = None
        if parts.username is not None:
            user = unquote(parts.username) + ":" + unquote(parts.password or "")
            self.authorization = b"Basic " + base64.b64encode(user.encode())
        self.bypass = tuple(_host_and_port(entry.lower().lstrip(".")) for entry in no_proxy)

    def used_for(self, host: str, port: int) -> bool:
        host = host.lower().strip("[]")
        for name, only_port in self.bypass:
            if name == "*" or (
                (host == name or host.endswith("." + name))
                and (only_port is None or only_port == port)
            ):
                return False
        return True

    def header(self) -> bytes:
        """The ``Proxy-Authorization`` header line, or nothing."""
        if self.authorization is None:
            return b""
        return b"Proxy-Authorization: " + self.authorization + b"\r\n"


def _authority(host: str, port: int) -> str:
    """``host:port`` as a request target or ``Host`` names it (an IPv6 host in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _host_and_port(entry: str) -> tuple[str, int | None]:
    """``name``, ``name:port``, ``[v6]:port`` or a bare IPv6 address."""
    if entry.startswith("["):
        name, _, rest = entry[1:].partition("]")
        return name, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
    name, colon, port = entry.rpartition(":")
    if colon and ":" not in name and port.isdigit():
        return name, int(port)
    return entry, None


async def _tunnel(stream: anyio.abc.ByteStream, host: str, port: int, proxy: Proxy) -> None:
    """Ask the proxy for a tunnel to ``host:port`` (``CONNECT``) and read its answer."""
    authority = _authority(host, port)
    await stream.send(
        f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n".encode("ascii")
        + proxy.header()
        + b"\r\n"
    )
    head = b""
    while b"\r\n\r\n" not in head:
        if len(head) > 65536:
            raise httpcore.ProxyError("the proxy's answer to CONNECT has no end")
        try:
            head += await stream.receive()
        except anyio.EndOfStream:
            raise httpcore.ProxyError("the proxy closed the connection at CONNECT") from None
    status_line = head.split(b"\r\n", 1)[0].split(b" ", 2)
    if len(status_line) < 2 or not status_line[1].startswith(b"2"):
        # the status only, cut short: it goes into results and logs
        shown = status_line[1][:16].decode("ascii", "replace") if len(status_line) > 1 else "?"
        raise httpcore.ProxyError(f"the proxy answered {shown} to CONNECT")


class Pool:
    """Keep-alive connections to one (scheme, host, port)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        tls: Callable[[], ssl.SSLContext] | None,
        connect_timeout: float,
        keepalive_expiry: float,
        turns: Turns,
        proxy: Proxy | None = None,
    ) -> None:
        self.host, self.port = host, port
        self._tls = tls
        self._proxy = proxy
        # what a request's head needs through a proxy: plain HTTP goes in absolute form
        # (this before the path) with the proxy's credentials; a tunnel needs neither
        self.target_prefix = b""
        self.proxy_header = b""
        if proxy is not None and tls is None:
            authority = _authority(host, port)
            self.target_prefix = f"http://{authority}".encode("ascii")
            self.proxy_header = proxy.header()
        self._connect_timeout = connect_timeout
        self._expiry = keepalive_expiry
        self._turns = turns
        # the most recently used on top
        self._idle: list[_Conn] = []
        self.opened = 0  # connections made (tests)
        self.active = 0  # exchanges under way

    @property
    def idle(self) -> int:
        return len(self._idle)

    async def _connect(self) -> _Conn:
        try:
            with anyio.fail_after(self._connect_timeout):
                stream = await self._open()
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(str(exc)) from exc
        except httpcore.ProxyError:
            raise
        except Exception as exc:
            # refused, unreachable, no such host, the TLS handshake failed; also what
            # anyio's happy eyeballs raises for a port out of range (an exception group):
            # httpcore calls each of these a connect error
            raise httpcore.ConnectError(str(exc)) from exc
        self.opened += 1
        return _Conn(stream)

    async def _open(self) -> anyio.abc.ByteStream:
        proxy = self._proxy
        if proxy is None:
            if self._tls is None:
                return await anyio.connect_tcp(self.host, self.port)
            return await anyio.connect_tcp(
                self.host,
                self.port,
                ssl_context=self._tls(),
                tls_hostname=self.host,
                tls_standard_compatible=False,
            )
        stream: anyio.abc.ByteStream = await anyio.connect_tcp(proxy.host, proxy.port)
        if self._tls is None:
            return stream
        try:
            await _tunnel(stream, self.host, self.port, proxy)
            return await TLSStream.wrap(
                stream, hostname=self.host, ssl_context=self._tls(), standard_compatible=False
            )
        except BaseException:
            await _discard(stream)
            raise

    async def _take(self) -> _Conn:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if now - conn.since < self._expiry and not _readable(conn.sock):
                return conn
            await _discard(conn.stream)
        return await self._connect()

    async def _put(self, conn: _Conn) -> None:
        conn.since = time.monotonic()
        self._idle.append(conn)
        await self.expire()

    async def expire(self) -> None:
        """Close the idle connections past their expiry (the oldest are at the bottom).
        Shielded: the answer is read, the request's deadline must not lose it now."""
        now = time.monotonic()
        if not self._idle or now - self._idle[0].since < self._expiry:
            return  # the usual case: no cancel scope to make
        with anyio.CancelScope(shield=True):
            while self._idle and now - self._idle[0].since >= self._expiry:
                await _discard(self._idle.pop(0).stream)

    async def exchange(self, request: bytes, *, head_only: bool = False) -> Answer:
        """Send ``request`` (head and body) and read the answer. Raises httpcore's
        exceptions (module docstring); a cancelled exchange closes its connection."""
        self.active += 1  # before the first await: a sweep never drops a pool in use
        conn: _Conn | None = None
        reuse = False
        try:
            conn = await self._take()
            reuse, answer = await self._exchange(conn.stream, request, head_only)
            return answer
        finally:
            self.active -= 1
            if conn is not None:
                if reuse:
                    await self._put(conn)
                else:
                    await _discard(conn.stream)

    async def _exchange(
        self, stream: anyio.abc.ByteStream, request: bytes, head_only: bool
    ) -> tuple[bool, Answer]:
        # As httpcore does with a failed write: read anyway, the server may have answered
        # before closing (a 413 for a huge body); if it did not, the read says what happened.
        with contextlib.suppress(OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            await stream.send(request)
        response = _Response()
        parser = response.parser
        turns = self._turns
        while not response.done:
            turns.end()  # never wait on the network holding a turn
            try:
                data = await stream.receive(_READ_SIZE)
            except anyio.EndOfStream:
                if response.until_eof():
                    break  # the body is what came before the close
                if not response.started:
                    raise httpcore.RemoteProtocolError(
                        "Server disconnected without sending a response."
                    ) from None
                raise httpcore.RemoteProtocolError(
                    "peer closed connection without sending complete message body"
                ) from None
            except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
                raise httpcore.ReadError(str(exc) or type(exc).__name__) from exc
            await turns.begin()
            response.started = True
            try:
                parser.feed_data(data)
            except httptools.HttpParserUpgrade as exc:
                # 101 Switching Protocols, never asked for: httpcore says the same
                raise httpcore.RemoteProtocolError("unexpected protocol switch") from exc
            except httptools.HttpParserCallbackError as exc:
                cause = exc.__cause__ or exc.__context__  # what a callback raised
                if isinstance(cause, httpcore.RemoteProtocolError):
                    raise cause from None  # on_message_complete's
                raise httpcore.RemoteProtocolError(str(exc)) from exc
            except httptools.HttpParserError as exc:
                if not response.done:
                    raise httpcore.RemoteProtocolError(str(exc)) from exc
                response.keep = False  # a complete answer, then bytes that are not HTTP
            if head_only and response.status >= 200:
                response.done = True  # an answer to HEAD has no body, whatever it says
                response.keep = False
        answer = response.status, response.headers, b"".join(response.body)
        return response.done and response.keep, answer

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            await _discard(conn.stream)


class Sender:
    """A ``Pool`` per (scheme, host, port), and the request bytes."""

    def __init__(
        self,
        *,
        tls: Callable[[], ssl.SSLContext],
        connect_timeout: float,
        keepalive_expiry: float,
        turns: Turns,
        proxy: Proxy | None = None,
    ) -> None:
        self._tls = tls
        self._connect_timeout = connect_timeout
        self._expiry = keepalive_expiry
        self._turns = turns
        self._proxy = proxy
        self.pools: dict[tuple[bytes, bytes, int], Pool] = {}
        self._swept = time.monotonic()

    async def pool(self, scheme: bytes, host: bytes, port: int | None) -> Pool:
        """The pool of (scheme, host, port); every ``keepalive_expiry`` the idle
        connections of every pool are expired first, and pools left empty dropped: a
        host sent to once keeps no connection and no pool."""
        if time.monotonic() - self._swept >= self._expiry:
            self._swept = time.monotonic()
            for key, each in list(self.pools.items()):
                await each.expire()
                if not each.idle and not each.active:
                    del self.pools[key]
        port = port or _DEFAULT_PORTS.get(scheme, 0)
        key = (scheme, host, port)
        pool = self.pools.get(key)
        if pool is None:
            if scheme not in _DEFAULT_PORTS:
                raise httpcore.UnsupportedProtocol(
                    f"Request URL has an unsupported scheme {scheme!r}"
                )
            name = host.decode("ascii")
            proxy = self._proxy
            pool = self.pools[key] = Pool(
                name,
                port,
                tls=self._tls if scheme == b"https" else None,
                connect_timeout=self._connect_timeout,
                keepalive_expiry=self._expiry,
                turns=self._turns,
                proxy=proxy if proxy is not None and proxy.used_for(name, port) else None,
            )
        return pool

    async def aclose(self) -> None:
        pools, self.pools = self.pools, {}
        with anyio.CancelScope(shield=True):
            for pool in pools.values():
                await pool.aclose()


def request_bytes(
    method: str,
    target: bytes,
    host: bytes,
    headers: dict[str, str],
    content: bytes,
    extra: bytes = b"",
) -> bytes:
    """The request as today's sender writes it: Host first, the headers, Content-Length
    last (``0`` second for a POST, PUT or PATCH without a body), then the body.
    ``extra``: header lines after the headers (a proxy's ``Proxy-Authorization``)."""
    lines = [method.encode("ascii"), b" ", target, b" HTTP/1.1\r\nHost: ", host, b"\r\n"]
    if not content and method in ("POST", "PUT", "PATCH"):
        lines.append(b"Content-Length: 0\r\n")
    lines.append("".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode("ascii"))
    lines.append(extra)
    if content:
        lines += [b"Content-Length: ", str(len(content)).encode("ascii"), b"\r\n"]
    lines += [b"\r\n", content]
    return b"".join(lines)
