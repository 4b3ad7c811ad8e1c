"""The faults a sender must classify as today, through each candidate of ``benchmarks.senders``.

    python -m benchmarks.sender_faults

A loopback server with one port per fault (refused, held past the timeout, closed
before answering, reset, a truncated body, not HTTP, a chunked answer); each is sent
through today's ``Dispatcher`` (its ``TransportErrorKind``), through pycurl (libcurl's
error number) and through the httptools pool (the exception). What the table shows is
the mapping a new sender would need for parity, not a pass/fail.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Callable, Iterator

import trio

from benchmarks.common import ENDPOINT, request_body
from benchmarks.senders import CurlThread, H1Pool, _requests, missing

OK_BODY = b'{"usage":{"prompt_tokens":1,"completion_tokens":1}}'


def _read_request(conn: socket.socket) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return
        data += chunk


def _hold(conn: socket.socket) -> None:
    _read_request(conn)
    conn.recv(1)  # until the client gives up


def _close(conn: socket.socket) -> None:
    _read_request(conn)


def _reset(conn: socket.socket) -> None:
    _read_request(conn)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _truncated(conn: socket.socket) -> None:
    _read_request(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + OK_BODY[:10])


def _garbage(conn: socket.socket) -> None:
    _read_request(conn)
    conn.sendall(b"HELLO THERE\r\n\r\n")


def _chunked(conn: socket.socket) -> None:
    _read_request(conn)
    half = len(OK_BODY) // 2
    conn.sendall(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n"
        + f"{half:x}\r\n".encode()
        + OK_BODY[:half]
        + f"\r\n{len(OK_BODY) - half:x}\r\n".encode()
        + OK_BODY[half:]
        + b"\r\n0\r\n\r\n"
    )
    conn.recv(1)


FAULTS: dict[str, Callable[[socket.socket], None]] = {
    "held past the timeout": _hold,
    "closed before answering": _close,
    "reset after the request": _reset,
    "truncated body": _truncated,
    "not HTTP": _garbage,
    "chunked answer (not a fault)": _chunked,
}


@contextlib.contextmanager
def servers() -> Iterator[dict[str, int]]:
    """A listening socket per fault, each served by a thread; plus a refused port."""
    socks: list[socket.socket] = []
    ports: dict[str, int] = {}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        ports["refused"] = s.getsockname()[1]
    for name, behave in FAULTS.items():
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(16)
        socks.append(srv)
        ports[name] = srv.getsockname()[1]

        def serve(srv: socket.socket = srv, behave: Callable[..., None] = behave) -> None:
            while True:
                try:
                    conn, _ = srv.accept()
                except OSError:
                    return
                with conn, contextlib.suppress(OSError):
                    behave(conn)

        threading.Thread(target=serve, daemon=True).start()
    try:
        yield ports
    finally:
        for srv in socks:
            with contextlib.suppress(OSError):
                srv.shutdown(socket.SHUT_RDWR)
            srv.close()


async def _today(port: int) -> str:
    from fusillade.core.retry import TransportError
    from fusillade.runtime.config import DaemonConfig
    from fusillade.runtime.dispatch import Dispatcher

    async with Dispatcher(DaemonConfig(request_timeout=1.0, connect_timeout=1.0)) as d:
        sent = await d.send(_requests(f"http://127.0.0.1:{port}", 1)[0])
    if isinstance(sent.outcome, TransportError):
        message = sent.outcome.message.split(" (")[0]
        kind = sent.outcome.kind.value
        return message if message.startswith(kind) else f"{kind}: {message}"
    return f"HTTP {sent.outcome.status}"


async def _curl(port: int) -> str:
    curl = CurlThread(trio.lowlevel.current_trio_token(), 4)
    # today's timeouts, 1 s here (CurlThread's default is 600 s)
    handle = curl._handle()
    handle.setopt(curl.pycurl.TIMEOUT_MS, 1000)
    handle.setopt(curl.pycurl.CONNECTTIMEOUT_MS, 1000)
    curl.free.append(handle)
    try:
        status, _h, _b = await curl.exchange(
            f"http://127.0.0.1:{port}{ENDPOINT}",
            ["content-type: application/json", "Expect:"],
            request_body(0).encode(),
        )
    except RuntimeError as exc:
        errno = int(str(exc).split()[2].rstrip(":"))
        names = sorted(
            k
            for k, v in vars(curl.pycurl).items()
            if k.startswith("E_") and not k.startswith(("E_MULTI", "E_FTP")) and v == errno
        )
        return f"{errno} {names[0] if names else '?'}: {str(exc).split(': ', 1)[1][:36]}"
    else:
        return f"HTTP {status}"
    finally:
        curl.close()


async def _httptools(port: int) -> str:
    pool = H1Pool("127.0.0.1", port, 1.0)
    body = request_body(0).encode()
    head = (
        f"POST {ENDPOINT} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"content-type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    try:
        status, _h, _b = await pool.exchange(head, body, 1.0)
    except Exception as exc:  # what it raises is the point
        return f"{type(exc).__module__}.{type(exc).__name__}"[:70]
    else:
        return f"HTTP {status}"
    finally:
        await pool.aclose()


COLUMNS = {
    "today (Dispatcher)": (_today, "fusillade"),
    "pycurl (libcurl error)": (_curl, "pycurl"),
    "httptools pool (exception)": (_httptools, "httptools"),
}


async def probe() -> tuple[list[str], list[list[str]]]:
    """The header and the rows of the table: a column per sender that is installed."""
    columns = {k: f for k, (f, name) in COLUMNS.items() if not missing(name)}
    rows = []
    with servers() as ports:
        for fault, port in ports.items():
            rows.append([fault, *[await send(port) for send in columns.values()]])
    return ["fault", *columns], rows


def main() -> None:
    header, rows = trio.run(probe)
    for row in [header, ["---"] * len(header), *rows]:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
