"""Helpers of the reliability scenarios: daemons in processes, and looking into the database.

The scenarios read the database through psycopg directly (not the repository under test),
so what they assert is what is stored, whatever the engine believes.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID, uuid4

import attrs
import h11
import psycopg
import trio

HERE = Path(__file__).resolve().parent
IN_FLIGHT = ("claimed", "processing")


@attrs.frozen
class DaemonProcess:
    """A daemon started by ``start_daemon``: its process and its ``daemons.id``."""

    process: trio.Process
    id: UUID

    def kill(self) -> None:
        """SIGKILL (only this process: the test started it)."""
        self.process.kill()

    def terminate(self) -> None:
        """SIGTERM: a graceful stop."""
        self.process.terminate()


async def start_daemon(
    nursery: trio.Nursery, database_url: str, upstream_url: str, **flags: object
) -> DaemonProcess:
    """Start ``daemon_main.py`` and wait for its ``ready`` line.

    ``flags`` become options: ``stale_after=2.0`` -> ``--stale-after 2.0``.
    """
    daemon_id = uuid4()
    args = [sys.executable, str(HERE / "daemon_main.py"), database_url, upstream_url]
    args += ["--daemon-id", str(daemon_id)]
    for name, value in flags.items():
        args += ["--" + name.replace("_", "-"), str(value)]
    process: trio.Process = await nursery.start(
        partial(trio.run_process, args, stdout=subprocess.PIPE, check=False)
    )
    assert process.stdout is not None
    with trio.fail_after(30):
        seen = b""
        while b"ready" not in seen:
            chunk = await process.stdout.receive_some(100)
            assert chunk, f"the daemon exited before it was ready ({process.returncode})"
            seen += chunk
    return DaemonProcess(process, daemon_id)


def _rows(url: str, query: str, params: Sequence[Any] | dict[str, Any]) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        return conn.execute(query, params).fetchall()


async def rows(url: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    """Run ``query`` on a connection of its own (in a worker thread)."""
    return await trio.to_thread.run_sync(_rows, url, query, params)


async def held_by(url: str, daemon_id: UUID) -> int:
    """Rows ``daemon_id`` holds (claimed or processing)."""
    ((count,),) = await rows(
        url,
        "SELECT count(*) FROM requests WHERE daemon_id = %s AND state = ANY(%s)",
        daemon_id,
        list(IN_FLIGHT),
    )
    return int(count)


async def states(url: str, batch: UUID) -> dict[str, int]:
    """How many requests of ``batch`` are in each state."""
    found = await rows(
        url, "SELECT state, count(*) FROM requests WHERE batch_id = %s GROUP BY state", batch
    )
    return {state: int(count) for state, count in found}


async def daemon_status(url: str, daemon_id: UUID) -> str | None:
    found = await rows(url, "SELECT status FROM daemons WHERE id = %s", daemon_id)
    return str(found[0][0]) if found else None


async def poll(
    check: Callable[[], Awaitable[bool]],
    *,
    timeout: float,
    interval: float = 0.05,
    what: str = "condition",
) -> float:
    """Call ``check`` every ``interval`` until it is true; returns the seconds it took.

    Fails the test (``trio.TooSlowError``) after ``timeout``, naming ``what``.
    """
    started = trio.current_time()
    try:
        with trio.fail_after(timeout):
            while not await check():
                await trio.sleep(interval)
    except trio.TooSlowError:
        raise trio.TooSlowError(f"{what}: not reached within {timeout} s") from None
    return trio.current_time() - started


async def raw_request(
    url: str,
    method: str,
    path: str,
    headers: list[tuple[str, str]],
    chunks: Iterable[bytes],
    *,
    timeout: float = 15,
) -> tuple[int, bytes, int]:
    """Send a request over a bare connection; returns (status, body, bytes of body sent).

    The body is sent while the answer is read, and sending stops quietly when the server
    answers or closes the connection first (a 413 before the body was read): so a route
    that would buffer a huge body shows as a timeout, one that refuses it early does not.
    ``headers`` without ``content-length`` send the body chunked.
    """
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    connection = h11.Connection(h11.CLIENT)
    if "content-length" not in {name.lower() for name, _ in headers}:
        headers = [*headers, ("transfer-encoding", "chunked")]
    head = h11.Request(method=method, target=path, headers=[("host", parts.netloc), *headers])
    sent = 0
    answered = trio.Event()
    with trio.fail_after(timeout):
        stream = await trio.open_tcp_stream(parts.hostname, parts.port)
        async with stream, trio.open_nursery() as nursery:

            async def send() -> None:
                nonlocal sent
                gone = (trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError)
                try:
                    await stream.send_all(connection.send(head) or b"")
                    for chunk in chunks:
                        if answered.is_set():
                            return
                        await stream.send_all(connection.send(h11.Data(data=chunk)) or b"")
                        sent += len(chunk)
                    await stream.send_all(connection.send(h11.EndOfMessage()) or b"")
                except gone:
                    pass

            nursery.start_soon(send)
            status, body = 0, b""
            while True:
                event = connection.next_event()
                if event is h11.NEED_DATA:
                    try:
                        data = await stream.receive_some(65536)
                    except trio.BrokenResourceError:
                        data = b""
                    connection.receive_data(data)
                    continue
                if isinstance(event, h11.Response):
                    status = event.status_code
                    answered.set()
                elif isinstance(event, h11.Data):
                    body += bytes(event.data)
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    break
            nursery.cancel_scope.cancel()
    return status, body, sent
