"""Both senders (``[daemon] sender``: httpcore's pools, httptools' keep-alive pools) against
real loopback servers: each network fault classified the same (the parity issue 16 asks
for; tests/benchmarks/test_senders.py pins today's table), the same request bytes, and
what a keep-alive pool must get right (reuse, ``Connection: close``, a server closing an
idle connection, cancellation, answers framed every way, TLS)."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import anyio
import pytest

from fusillade.core.attempts import ClaimedRequest
from fusillade.core.retry import HttpResponse, TransportError
from fusillade.runtime.config import DaemonConfig
from fusillade.runtime.dispatch import Dispatcher, Sent

SENDERS = ("httpcore", "httptools")
OK_BODY = b'{"usage":{"prompt_tokens":1,"completion_tokens":2}}'
REQUEST_ID = uuid.UUID("00000000-0000-4000-8000-000000000001")


def _request(base_url: str, *, method: str = "POST", body: str = '{"model":"m"}') -> ClaimedRequest:
    return ClaimedRequest(
        id=REQUEST_ID,
        batch_id=REQUEST_ID,
        attempt=1,
        budget_used=1,
        model="m",
        batch_expires_at=datetime(2100, 1, 1, tzinfo=UTC),
        custom_id="c-1",
        endpoint=base_url,
        method=method,
        path="/v1/chat/completions?x=1",
        body=body,
        daemon_id=uuid.uuid4(),
        claimed_at=datetime(2026, 1, 1, tzinfo=UTC),
        started_at=datetime(2026, 1, 1, tzinfo=UTC),
        not_before=datetime(2026, 1, 1, tzinfo=UTC),
    )


# --- a loopback server: a thread per connection, each running a handler ------------------


class Conn:
    """One accepted connection as a handler sees it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = b""

    def read_request(self) -> bytes | None:
        """The next request's bytes (head and Content-Length body); None at EOF."""
        while b"\r\n\r\n" not in self._buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self._buffer += chunk
        head, _, rest = self._buffer.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(rest) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            rest += chunk
        self._buffer = rest[length:]
        return head + b"\r\n\r\n" + rest[:length]

    def answer(self, body: bytes = OK_BODY, *, extra: bytes = b"") -> None:
        self.sock.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            + extra
            + b"Content-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )


class ThreadedListener:
    """A loopback listener serving each accepted connection in a thread of its own
    (``_serve``); counts the connections."""

    def __init__(self) -> None:
        self.connections = 0
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()


class Server(ThreadedListener):
    """Counts connections and keeps every request it read (``handler`` records them)."""

    def __init__(self, handler: Callable[[Conn, Server], None], tls: ssl.SSLContext | None) -> None:
        self.handler = handler
        self.tls = tls
        self.requests: list[bytes] = []
        self.closed = threading.Semaphore(0)  # released when a connection's handler ends
        super().__init__()
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"

    def _serve(self, sock: socket.socket) -> None:
        try:
            if self.tls is not None:
                sock = self.tls.wrap_socket(sock, server_side=True)
            with sock, contextlib.suppress(OSError):
                self.handler(Conn(sock), self)
        except OSError:
            pass  # a handshake the client refused
        finally:
            self.closed.release()

    def wait_closed(self, timeout: float = 10.0) -> None:
        assert self.closed.acquire(timeout=timeout), "the server never closed a connection"


@contextlib.contextmanager
def serving(
    handler: Callable[[Conn, Server], None], tls: ssl.SSLContext | None = None
) -> Iterator[Server]:
    server = Server(handler, tls)
    try:
        yield server
    finally:
        server.close()


async def _send(
    sender: str, req: ClaimedRequest, *, timeout: float = 5.0, tls: ssl.SSLContext | None = None
) -> Sent:
    async with _dispatcher(sender, timeout=timeout, tls=tls) as d:
        return await d.send(req)


def _dispatcher(
    sender: str, *, timeout: float = 5.0, tls: ssl.SSLContext | None = None
) -> Dispatcher:
    d = Dispatcher(DaemonConfig(request_timeout=timeout, connect_timeout=timeout, sender=sender))
    if tls is not None:
        d._tls = tls  # the shared client context, trusting the test's certificate
    return d


def _status(sent: Sent) -> int:
    assert isinstance(sent.outcome, HttpResponse), sent.outcome
    return sent.outcome.status


# --- the faults of benchmarks/sender_faults.py ---------------------------------------------


def _hold(conn: Conn, _s: Server) -> None:
    conn.read_request()
    conn.sock.recv(1)  # until the client gives up


def _close(conn: Conn, _s: Server) -> None:
    conn.read_request()


def _reset(conn: Conn, _s: Server) -> None:
    conn.read_request()
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _truncated(conn: Conn, _s: Server) -> None:
    conn.read_request()
    conn.sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + OK_BODY[:10])


def _garbage(conn: Conn, _s: Server) -> None:
    conn.read_request()
    conn.sock.sendall(b"HELLO THERE\r\n\r\n")


def _chunked(conn: Conn, _s: Server) -> None:
    conn.read_request()
    half = len(OK_BODY) // 2
    conn.sock.sendall(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n"
        + f"{half:x}\r\n".encode()
        + OK_BODY[:half]
        + f"\r\n{len(OK_BODY) - half:x}\r\n".encode()
        + OK_BODY[half:]
        + b"\r\n0\r\n\r\n"
    )
    conn.sock.recv(1)


# fault: (handler, what today's sender makes of it; tests/benchmarks/test_senders.py)
FAULTS: dict[str, tuple[Callable[[Conn, Server], None] | None, str]] = {
    "refused": (None, "connect: ConnectError"),
    "held past the timeout": (_hold, "read_timeout: request timed out"),
    "closed before answering": (_close, "protocol: RemoteProtocolError"),
    "reset after the request": (_reset, "read: ReadError"),
    "truncated body": (_truncated, "protocol: RemoteProtocolError"),
    "not HTTP": (_garbage, "protocol: RemoteProtocolError"),
    "chunked answer (not a fault)": (_chunked, "HTTP 200"),
}


def _shown(sent: Sent) -> str:
    """What benchmarks/sender_faults.py shows of an outcome."""
    if isinstance(sent.outcome, TransportError):
        message = sent.outcome.message.split(" (")[0]
        kind = sent.outcome.kind.value
        return message if message.startswith(kind) else f"{kind}: {message}"
    assert isinstance(sent.outcome, HttpResponse)
    return f"HTTP {sent.outcome.status}"


@pytest.mark.parametrize("sender", SENDERS)
@pytest.mark.parametrize("fault", FAULTS)
async def test_each_fault_is_classified_as_today(sender: str, fault: str) -> None:
    handler, expected = FAULTS[fault]
    if handler is None:
        with socket.socket() as s:  # a loopback port nothing listens on
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        sent = await _send(sender, _request(f"http://127.0.0.1:{port}"), timeout=0.5)
        assert _shown(sent) == expected
        assert isinstance(sent.outcome, TransportError)
        assert sent.outcome.message.endswith(f"(upstream 127.0.0.1:{port})")
        return
    with serving(handler) as server:
        sent = await _send(sender, _request(server.url), timeout=0.5)
    assert _shown(sent) == expected


# --- the same request, the same bytes -------------------------------------------------------


def _recording(conn: Conn, server: Server) -> None:
    while (request := conn.read_request()) is not None:
        server.requests.append(request)
        conn.answer()


@pytest.mark.parametrize("method", ["POST", "GET"])
async def test_both_senders_send_the_same_bytes(method: str) -> None:
    body = "" if method == "GET" else '{"model":"m","messages":[]}'
    sent = []
    with serving(_recording) as server:
        for sender in SENDERS:
            await _send(sender, _request(server.url, method=method, body=body))
        sent = list(server.requests)
    assert len(sent) == 2
    assert sent[0] == sent[1]
    assert sent[0].startswith(
        f"{method} /v1/chat/completions?x=1 HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n".encode()
    )


async def test_a_post_without_a_body_says_content_length_0_like_today() -> None:
    with serving(_recording) as server:
        for sender in SENDERS:
            await _send(sender, _request(server.url, body=""))
        first, second = server.requests
    assert first == second
    assert first.split(b"\r\n")[2] == b"Content-Length: 0"


# --- keep-alive -------------------------------------------------------------------------------


@pytest.mark.parametrize("sender", SENDERS)
async def test_connections_are_kept_alive_and_reused(sender: str) -> None:
    with serving(_recording) as server:
        async with _dispatcher(sender) as d:
            for _ in range(5):
                assert _status(await d.send(_request(server.url))) == 200
            assert d.shard_count == 1  # DaemonStats.shards: one httpcore shard, or one pool
        assert server.connections == 1
        assert len(server.requests) == 5


@pytest.mark.parametrize("sender", SENDERS)
async def test_concurrent_requests_open_one_connection_each_then_reuse_them(sender: str) -> None:
    # one connection per request in flight, never more; reused afterwards
    release = threading.Event()
    all_arrived = threading.Event()

    def handler(conn: Conn, server: Server) -> None:
        while (request := conn.read_request()) is not None:
            server.requests.append(request)
            if len(server.requests) >= 3:
                all_arrived.set()
            release.wait(10)
            conn.answer()

    with serving(handler) as server:
        async with _dispatcher(sender) as d:
            statuses: list[int] = []

            async def one() -> None:
                statuses.append(_status(await d.send(_request(server.url))))

            async with anyio.create_task_group() as tg:
                for _ in range(3):
                    tg.start_soon(one)
                assert await anyio.to_thread.run_sync(all_arrived.wait, 10)
                release.set()
            for _ in range(3):
                await one()
        assert statuses == [200] * 6
        assert server.connections == 3


@pytest.mark.parametrize("sender", SENDERS)
async def test_connection_close_is_honoured(sender: str) -> None:
    def handler(conn: Conn, server: Server) -> None:
        server.requests.append(conn.read_request() or b"")
        conn.answer(extra=b"Connection: close\r\n")
        conn.sock.recv(1)  # the client closes: a server honouring close would too

    with serving(handler) as server:
        async with _dispatcher(sender) as d:
            for _ in range(3):
                assert _status(await d.send(_request(server.url))) == 200
                server.wait_closed()  # the client closed it
        assert server.connections == 3


@pytest.mark.parametrize("sender", SENDERS)
async def test_a_server_closing_an_idle_connection_costs_no_request(sender: str) -> None:
    # the server answers keep-alive, then closes the idle connection (its keep-alive
    # timeout); the next request must go out on a new connection, not fail
    def handler(conn: Conn, server: Server) -> None:
        server.requests.append(conn.read_request() or b"")
        conn.answer()

    with serving(handler) as server:
        async with _dispatcher(sender) as d:
            assert _status(await d.send(_request(server.url))) == 200
            await anyio.to_thread.run_sync(server.wait_closed)
            assert _status(await d.send(_request(server.url))) == 200
            await anyio.to_thread.run_sync(server.wait_closed)
            assert _status(await d.send(_request(server.url))) == 200
        assert server.connections == 3


@pytest.mark.parametrize("sender", SENDERS)
async def test_a_cancelled_exchange_closes_its_connection(sender: str) -> None:
    # headers and part of the body, then nothing: the request is cancelled mid-read
    part_sent = threading.Event()

    def handler(conn: Conn, server: Server) -> None:
        while (request := conn.read_request()) is not None:
            server.requests.append(request)
            if len(server.requests) == 1:
                conn.sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{")
                part_sent.set()
            else:
                conn.answer()

    with serving(handler) as server:
        async with _dispatcher(sender) as d:
            with anyio.move_on_after(10) as scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(d.send, _request(server.url))
                    assert await anyio.to_thread.run_sync(part_sent.wait, 10)
                    tg.cancel_scope.cancel()
            assert not scope.cancelled_caught
            await anyio.to_thread.run_sync(server.wait_closed)  # the client closed it
            assert _status(await d.send(_request(server.url))) == 200
        assert server.connections == 2


# --- answers framed every way -----------------------------------------------------------------


def _big(conn: Conn, server: Server) -> None:
    conn.read_request()
    conn.answer(json.dumps({"usage": {"prompt_tokens": 1}, "x": "a" * (1 << 20)}).encode())


def _http10(conn: Conn, server: Server) -> None:
    conn.read_request()
    conn.sock.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n" + OK_BODY)
    # no length: the body ends when the server closes


def _early_hints(conn: Conn, server: Server) -> None:
    conn.read_request()
    conn.sock.sendall(b"HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n")
    conn.answer(extra=b"X-Twice: a\r\nx-twice: b\r\n")


def _error(conn: Conn, server: Server) -> None:
    conn.read_request()
    body = b'{"error":{"message":"slow down"}}'
    conn.sock.sendall(
        b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


@pytest.mark.parametrize("sender", SENDERS)
async def test_a_large_body_arrives_whole(sender: str) -> None:
    with serving(_big) as server:
        sent = await _send(sender, _request(server.url))
    assert isinstance(sent.outcome, HttpResponse)
    assert len(json.loads(sent.outcome.body)["x"]) == 1 << 20
    assert sent.input_tokens == 1


@pytest.mark.parametrize("sender", SENDERS)
async def test_an_http_1_0_answer_without_a_length_ends_at_the_close(sender: str) -> None:
    with serving(_http10) as server:
        sent = await _send(sender, _request(server.url))
    assert isinstance(sent.outcome, HttpResponse), sent.outcome
    assert (sent.outcome.status, sent.outcome.body) == (200, OK_BODY.decode())
    assert sent.output_tokens == 2


@pytest.mark.parametrize("sender", SENDERS)
async def test_chunked_answers_are_joined(sender: str) -> None:
    with serving(_chunked) as server:
        sent = await _send(sender, _request(server.url))
    assert isinstance(sent.outcome, HttpResponse)
    assert sent.outcome.body == OK_BODY.decode()
    assert sent.outcome.headers["transfer-encoding"] == "chunked"


@pytest.mark.parametrize("sender", SENDERS)
async def test_an_informational_answer_is_skipped_and_headers_are_joined(sender: str) -> None:
    with serving(_early_hints) as server:
        sent = await _send(sender, _request(server.url))
    assert isinstance(sent.outcome, HttpResponse)
    assert sent.outcome.status == 200
    assert sent.outcome.headers["x-twice"] == "a, b"
    assert "link" not in sent.outcome.headers


@pytest.mark.parametrize("sender", SENDERS)
async def test_an_error_answer_keeps_status_headers_and_body(sender: str) -> None:
    with serving(_error) as server:
        sent = await _send(sender, _request(server.url))
    assert sent.outcome == HttpResponse(
        429,
        {"retry-after": "3", "content-length": "33"},
        '{"error":{"message":"slow down"}}',
    )


# --- TLS ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (openssl's command line)."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    where = tmp_path_factory.mktemp("tls")
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


def _server_tls(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(*certificate)
    return ctx


@pytest.mark.parametrize("sender", SENDERS)
async def test_tls_with_a_trusted_certificate(sender: str, certificate: tuple[Path, Path]) -> None:
    client = ssl.create_default_context(cafile=str(certificate[0]))
    with serving(_recording, _server_tls(certificate)) as server:
        async with _dispatcher(sender, tls=client) as d:
            for _ in range(3):
                assert _status(await d.send(_request(server.url))) == 200
        assert server.connections == 1  # kept alive over TLS too
        assert server.requests[0].startswith(b"POST /v1/chat/completions?x=1 HTTP/1.1\r\n")


@pytest.mark.parametrize("sender", SENDERS)
async def test_tls_with_an_untrusted_certificate_is_a_connect_error(
    sender: str, certificate: tuple[Path, Path]
) -> None:
    with serving(_recording, _server_tls(certificate)) as server:
        sent = await _send(sender, _request(server.url))  # the default CA bundle
    assert _shown(sent) == "connect: ConnectError"


async def test_thousands_of_https_connections_at_once(
    certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # 2,000 requests in flight over TLS: the server answers none until all have arrived, so
    # 2,000 connections are open at once; a second wave reuses them all (no new handshake).
    # The default sender only: 4,000 handshakes and exchanges cost 17-25 s a sender here.
    sender = "httptools"
    from anyio.streams.tls import TLSListener

    from fusillade.runtime import dispatch

    # 4,000 handshakes and exchanges in one process can outlast the 5 s keep-alive expiry
    # on a busy machine, and an expired connection is rightly replaced
    monkeypatch.setattr(dispatch, "_KEEPALIVE_EXPIRY", 600.0)

    n = 2000
    seen = {"connections": 0, "requests": 0}
    all_arrived = anyio.Event()

    async def answer_each_request(stream: anyio.abc.ByteStream) -> None:
        buffer = b""
        while True:
            while b"\r\n\r\n" not in buffer:
                buffer += await stream.receive()
            head, _, buffer = buffer.partition(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            while len(buffer) < length:
                buffer += await stream.receive()
            buffer = buffer[length:]
            seen["requests"] += 1
            if seen["requests"] == n:
                all_arrived.set()
            await all_arrived.wait()
            await stream.send(
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(OK_BODY), OK_BODY)
            )

    async def handle(stream: anyio.abc.ByteStream) -> None:
        seen["connections"] += 1
        async with stream:
            with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                await answer_each_request(stream)

    tcp = await anyio.create_tcp_listener(local_host="127.0.0.1", backlog=4096)
    listener = TLSListener(tcp, _server_tls(certificate), standard_compatible=False)
    port = tcp.extra(anyio.abc.SocketAttribute.local_port)
    client = ssl.create_default_context(cafile=str(certificate[0]))
    statuses: list[int] = []
    async with listener, anyio.create_task_group() as server:
        server.start_soon(listener.serve, handle)
        async with _dispatcher(sender, timeout=120, tls=client) as d:

            async def one() -> None:
                statuses.append(_status(await d.send(_request(f"https://127.0.0.1:{port}"))))

            for _wave in range(2):
                async with anyio.create_task_group() as tg:
                    for _ in range(n):
                        tg.start_soon(one)
        server.cancel_scope.cancel()
    assert statuses == [200] * (2 * n)
    assert seen == {"connections": n, "requests": 2 * n}


# --- the httptools pools themselves ------------------------------------------------------------


async def test_idle_connections_expire_and_unused_pools_go() -> None:
    from fusillade.runtime.fair_reads import Turns
    from fusillade.runtime.http1 import Sender, request_bytes

    sender = Sender(
        # expiry 0: every idle connection is past it at the next sweep, with no wait
        tls=ssl.create_default_context,
        connect_timeout=5,
        keepalive_expiry=0.0,
        turns=Turns(4),
    )

    async def get(server: Server) -> int:
        pool = await sender.pool(b"http", b"127.0.0.1", server.port)
        head = request_bytes("GET", b"/", b"127.0.0.1", {}, b"")
        status, _, _ = await pool.exchange(head)
        return status

    with serving(_recording) as a, serving(_recording) as b:
        assert await get(a) == 200
        assert (b"http", b"127.0.0.1", a.port) in sender.pools
        # sending elsewhere past the expiry closes a's idle connection and drops its pool
        assert await get(b) == 200
        await anyio.to_thread.run_sync(a.wait_closed)
        assert (b"http", b"127.0.0.1", a.port) not in sender.pools
        assert a.connections == 1
        await sender.aclose()


@pytest.mark.parametrize("sender", SENDERS)
async def test_a_protocol_switch_nobody_asked_for_is_a_protocol_error(sender: str) -> None:
    def handler(conn: Conn, server: Server) -> None:
        conn.read_request()
        conn.sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\nbytes")

    with serving(handler) as server:
        sent = await _send(sender, _request(server.url))
    assert _shown(sent) == "protocol: RemoteProtocolError"  # today's, not a crash


@pytest.mark.parametrize("sender", SENDERS)
async def test_tls_names_the_host_it_wants(sender: str, certificate: tuple[Path, Path]) -> None:
    # SNI: the server learns the host name (a virtual host's certificate depends on it)
    names: list[str | None] = []
    server_tls = _server_tls(certificate)

    def sni(_sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        names.append(name)

    server_tls.sni_callback = sni
    client = ssl.create_default_context(cafile=str(certificate[0]))
    with serving(_recording, server_tls) as server:
        url = f"https://localhost:{server.port}"
        sent = await _send(sender, _request(url), tls=client)
    assert _status(sent) == 200
    assert names == ["localhost"]
    assert f"\r\nHost: localhost:{server.port}\r\n".encode() in server.requests[0]


async def test_an_injected_transport_still_goes_through_httpx() -> None:
    import httpx

    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=OK_BODY)

    config = DaemonConfig(sender="httptools")
    async with Dispatcher(config, transport=httpx.MockTransport(answer)) as d:
        sent = await d.send(_request("http://upstream.invalid"))
    assert _status(sent) == 200
    assert [str(r.url) for r in seen] == ["http://upstream.invalid/v1/chat/completions?x=1"]


# --- through a proxy ([daemon] proxy, httptools only) ------------------------------------------


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while chunk := source.recv(65536):
            sink.sendall(chunk)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


class ForwardProxy(ThreadedListener):
    """An HTTP proxy on loopback: ``CONNECT`` tunnels, and absolute-form requests passed
    on as they came. Keeps the head of each connection's first request (``refuse``: the
    answer to every one instead)."""

    def __init__(self, refuse: bytes | None = None) -> None:
        self.refuse = refuse
        self.heads: list[bytes] = []
        super().__init__()

    def _serve(self, client: socket.socket) -> None:
        with client, contextlib.suppress(OSError):
            buffer = b""
            while b"\r\n\r\n" not in buffer:
                if not (chunk := client.recv(65536)):
                    return
                buffer += chunk
            head, _, rest = buffer.partition(b"\r\n\r\n")
            self.heads.append(head)
            if self.refuse is not None:
                client.sendall(self.refuse)
                return
            method, target, _ = head.split(b"\r\n", 1)[0].split(b" ")
            if method == b"CONNECT":
                host, _, port = target.decode().rpartition(":")
                first = rest
            else:
                parts = urlsplit(target.decode())
                host, port, first = str(parts.hostname), str(parts.port), buffer
            with socket.create_connection((host, int(port)), timeout=10) as upstream:
                upstream.settimeout(None)
                if method == b"CONNECT":
                    client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                if first:
                    upstream.sendall(first)
                back = threading.Thread(target=_pipe, args=(upstream, client), daemon=True)
                back.start()
                _pipe(client, upstream)
                back.join(10)


@contextlib.contextmanager
def proxying(refuse: bytes | None = None) -> Iterator[ForwardProxy]:
    proxy = ForwardProxy(refuse)
    try:
        yield proxy
    finally:
        proxy.close()


def _proxied(
    url: str, *, no_proxy: tuple[str, ...] = (), tls: ssl.SSLContext | None = None
) -> Dispatcher:
    d = Dispatcher(
        DaemonConfig(request_timeout=10, connect_timeout=10, proxy=url, no_proxy=no_proxy)
    )
    if tls is not None:
        d._tls = tls
    return d


# what "user:p@ss" (percent-encoded in the proxy's URL) becomes
BASIC = b"Proxy-Authorization: Basic dXNlcjpwQHNz\r\n"


async def test_plain_http_goes_to_the_proxy_in_absolute_form() -> None:
    with serving(_recording) as server, proxying() as proxy:
        async with _proxied(f"http://user:p%40ss@127.0.0.1:{proxy.port}") as d:
            for _ in range(3):
                assert _status(await d.send(_request(server.url))) == 200
    assert len(proxy.heads) == 1  # one connection to the proxy, kept alive
    assert len(server.requests) == 3
    for request in server.requests:  # passed on as the proxy got them
        assert request.startswith(
            f"POST http://127.0.0.1:{server.port}/v1/chat/completions?x=1 HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{server.port}\r\n".encode()
        )
        assert BASIC in request


async def test_https_goes_through_a_tunnel_the_proxy_cannot_read(
    certificate: tuple[Path, Path],
) -> None:
    client = ssl.create_default_context(cafile=str(certificate[0]))
    with serving(_recording, _server_tls(certificate)) as server, proxying() as proxy:
        async with _proxied(f"http://user:p%40ss@127.0.0.1:{proxy.port}", tls=client) as d:
            for _ in range(3):
                assert _status(await d.send(_request(server.url))) == 200
    authority = f"127.0.0.1:{server.port}"
    assert proxy.heads == [
        f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n".encode() + BASIC.rstrip()
    ]  # one tunnel for the three requests; the api key and body went inside it
    assert server.connections == 1
    for request in server.requests:
        assert request.startswith(b"POST /v1/chat/completions?x=1 HTTP/1.1\r\n")
        assert b"Proxy-Authorization" not in request


async def test_no_proxy_hosts_are_reached_directly() -> None:
    with serving(_recording) as server, proxying() as proxy:
        async with _proxied(f"http://127.0.0.1:{proxy.port}", no_proxy=("127.0.0.1",)) as d:
            assert _status(await d.send(_request(server.url))) == 200
        assert proxy.heads == []
        other_port = f"127.0.0.1:{server.port + 1 if server.port < 65535 else 1}"
        async with _proxied(f"http://127.0.0.1:{proxy.port}", no_proxy=(other_port,)) as d:
            assert _status(await d.send(_request(server.url))) == 200
        assert len(proxy.heads) == 1  # another port of the host: through the proxy
    assert server.requests[0].startswith(b"POST /v1/chat/completions?x=1 HTTP/1.1\r\n")


@pytest.mark.parametrize(
    ("host", "port", "entries", "proxied"),
    [
        ("api.example.com", 443, ("*",), False),
        ("example.com", 443, ("example.com",), False),
        ("api.example.com", 443, ("example.com",), False),  # subdomains too
        ("api.example.com", 443, (".example.com",), False),  # curl's leading dot
        ("API.Example.COM", 443, ("example.com",), False),
        ("badexample.com", 443, ("example.com",), True),  # a suffix is not a domain
        ("example.com", 8443, ("example.com:8443",), False),
        ("example.com", 443, ("example.com:8443",), True),
        ("::1", 8080, ("[::1]:8080",), False),
        ("::1", 8081, ("[::1]:8080",), True),
        ("::1", 80, ("::1",), False),
        ("10.0.0.7", 80, ("10.0.0.8", "internal"), True),
        ("internal", 80, ("10.0.0.8", "internal"), False),
    ],
)
def test_which_hosts_the_proxy_is_used_for(
    host: str, port: int, entries: tuple[str, ...], proxied: bool
) -> None:
    from fusillade.runtime.http1 import Proxy

    assert Proxy("http://proxy:3128", entries).used_for(host, port) is proxied


async def test_a_proxy_refusing_the_tunnel_is_a_proxy_error(certificate: tuple[Path, Path]) -> None:
    refusal = b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n"
    client = ssl.create_default_context(cafile=str(certificate[0]))
    with serving(_recording, _server_tls(certificate)) as server, proxying(refusal) as proxy:
        async with _proxied(f"http://127.0.0.1:{proxy.port}", tls=client) as d:
            sent = await d.send(_request(server.url))
    assert _shown(sent) == "protocol: ProxyError: the proxy answered 407 to CONNECT"
    assert server.connections == 0


async def test_a_proxy_that_is_down_is_a_connect_error() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # nothing listens there
    with serving(_recording) as server:
        async with _proxied(f"http://127.0.0.1:{port}") as d:
            sent = await d.send(_request(server.url))
    assert _shown(sent) == "connect: ConnectError"
    assert server.connections == 0


def test_a_proxy_needs_the_httptools_sender_and_an_http_url() -> None:
    with pytest.raises(ValueError, match="httptools"):
        DaemonConfig(proxy="http://proxy:3128", sender="httpcore")
    with pytest.raises(ValueError, match="http://"):
        DaemonConfig(proxy="https://proxy:3128")
    assert "secret" not in repr(DaemonConfig(proxy="http://user:secret@proxy:3128"))
