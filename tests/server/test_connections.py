"""Connections end when their request does: slow bodies, vanished clients, finished downloads.

Each test drives the server over a bare h11 connection, to behave as clients the SDK
never would: trickling a body, vanishing mid-body, keeping a connection open for ever.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import h11
import httpx
import pytest
import trio
from helpers import poll_until
from serverkit import StartServer, chat_line, jsonl, settings_for

from fusillade.mock_upstream import MockUpstream
from fusillade.server.serve import Running, serve

BOUNDARY = "slow"
UPLOAD_TYPE = f"multipart/form-data; boundary={BOUNDARY}"
UPLOAD_HEAD = (
    f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n\r\n'
).encode()


class Client:
    """One bare HTTP/1.1 connection to ``running``."""

    def __init__(self, stream: trio.SocketStream, netloc: str) -> None:
        self.stream = stream
        self.netloc = netloc
        self.h11 = h11.Connection(h11.CLIENT)

    @classmethod
    async def connect(cls, running: Running) -> Client:
        assert running.url is not None
        netloc = running.url.split("//", 1)[1]
        host, port = netloc.rsplit(":", 1)
        return cls(await trio.open_tcp_stream(host, int(port)), netloc)

    async def send(self, *events: Any) -> None:
        for event in events:
            await self.stream.send_all(self.h11.send(event) or b"")

    async def request(self, method: str, path: str, headers: list[tuple[str, str]]) -> None:
        await self.send(
            h11.Request(method=method, target=path, headers=[("host", self.netloc), *headers])
        )

    async def answer(self) -> tuple[int, bytes]:
        """The status and body of the response; the server may close the connection first."""
        status, body = 0, b""
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                try:
                    data = await self.stream.receive_some(65536)
                except trio.BrokenResourceError:
                    data = b""
                self.h11.receive_data(data)
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return status, body

    async def closed_by_server(self) -> bool:
        """Whether the server closed the connection (reads what it sends until then)."""
        try:
            return await self.stream.receive_some(65536) == b""
        except trio.BrokenResourceError:
            return True


async def trickle(client: Client, data: bytes, every: float) -> None:
    """Send ``data`` one byte at a time, ``every`` seconds apart, until the server hangs up."""
    for i in range(len(data)):
        try:
            await client.send(h11.Data(data=data[i : i + 1]))
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError):
            return
        await trio.sleep(every)  # the pace of a hostile client, not a wait for a condition


def fusillade_records(caplog: pytest.LogCaptureFixture) -> Iterator[logging.LogRecord]:
    return (r for r in caplog.records if r.name.startswith(("fusillade", "hypercorn")))


@pytest.mark.parametrize(
    ("path", "content_type", "head"),
    [("/v1/files", UPLOAD_TYPE, UPLOAD_HEAD), ("/v1/batches", "application/json", b'{"a": "')],
    ids=["upload", "json"],
)
async def test_a_body_trickling_in_is_cut_off(
    start_server: StartServer,
    caplog: pytest.LogCaptureFixture,
    path: str,
    content_type: str,
    head: bytes,
) -> None:
    caplog.set_level(logging.INFO, logger="fusillade")
    running = await start_server(body_read_timeout=timedelta(seconds=1), body_min_rate=1000)
    client = await Client.connect(running)
    async with client.stream, trio.open_nursery() as nursery:
        body = head + b"x" * 1000
        await client.request(
            "POST", path, [("content-type", content_type), ("content-length", str(len(body)))]
        )
        nursery.start_soon(trickle, client, body, 0.2)
        with trio.fail_after(10):  # the trickle would take 200 s
            status, answer = await client.answer()
            assert status == 408, answer
            assert b"request_timeout" in answer
            assert await client.closed_by_server()
        nursery.cancel_scope.cancel()
    lines = [r for r in fusillade_records(caplog) if "too slow" in r.getMessage()]
    assert [(r.levelno, r.exc_info) for r in lines] == [(logging.INFO, None)], lines


async def test_a_steady_slow_upload_earns_its_time(start_server: StartServer) -> None:
    # 1 s to start plus 1 s per 1,000 bytes: 20 KB sent at about 10 KB/s takes 2 s.
    running = await start_server(body_read_timeout=timedelta(seconds=1), body_min_rate=1000)
    file = jsonl([chat_line(f"c{i}", content="y" * 150) for i in range(100)])
    body = (
        UPLOAD_HEAD
        + file
        + f'\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name="purpose"'
        f"\r\n\r\nbatch\r\n--{BOUNDARY}--\r\n".encode()
    )
    client = await Client.connect(running)
    async with client.stream:
        await client.request(
            "POST", "/v1/files", [("content-type", UPLOAD_TYPE), ("content-length", str(len(body)))]
        )
        for start in range(0, len(body), 1000):
            await client.send(h11.Data(data=body[start : start + 1000]))
            await trio.sleep(0.1)  # the pace of a slow link
        await client.send(h11.EndOfMessage())
        with trio.fail_after(10):
            status, answer = await client.answer()
    assert status == 200, answer


async def test_a_client_vanishing_mid_upload_is_one_info_line(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fusillade")
    running = await start_server()
    client = await Client.connect(running)
    async with client.stream:
        headers = [("content-type", UPLOAD_TYPE), ("content-length", "1000000")]
        await client.request("POST", "/v1/files", headers)
        await client.send(h11.Data(data=UPLOAD_HEAD + b"x" * 10_000))

    def gone() -> list[logging.LogRecord]:
        return [r for r in fusillade_records(caplog) if "went away" in r.getMessage()]

    lines = await poll_until(gone, bool, timeout=10)
    assert [(r.levelno, r.exc_info) for r in lines] == [(logging.INFO, None)], lines
    assert "POST /v1/files" in lines[0].getMessage()
    assert [r for r in fusillade_records(caplog) if r.levelno >= logging.WARNING] == []
    assert running.url is not None
    async with httpx.AsyncClient(base_url=running.url) as api:
        assert (await api.get("/readyz")).status_code == 200


async def test_a_finished_download_frees_its_connection(
    database_url: str, mock_upstream: MockUpstream
) -> None:
    # The server is started here (not by the fixture) to time its graceful stop: a
    # connection left open after its download made the stop wait its whole grace period.
    settings = settings_for(database_url, mock_upstream.url)
    stopped = trio.Event()

    async def run(task_status: trio.TaskStatus[Running]) -> None:
        try:
            await serve(settings, run_daemon=False, migrate=False, task_status=task_status)
        finally:
            stopped.set()

    async with trio.open_nursery() as nursery:
        running: Running = await nursery.start(run)
        assert running.url is not None
        async with httpx.AsyncClient(base_url=running.url) as api:
            uploaded = await api.post(
                "/v1/files",
                files={"file": ("in.jsonl", jsonl([chat_line("a")]))},
                data={"purpose": "batch"},
            )
        file_id = uploaded.json()["id"]
        client = await Client.connect(running)
        async with client.stream:
            for _ in range(2):  # kept alive for the next request, like any response
                await client.request("GET", f"/v1/files/{file_id}/content", [])
                await client.send(h11.EndOfMessage())
                status, content = await client.answer()
                assert (status, content.count(b"\n")) == (200, 1)
                client.h11.start_next_cycle()
            # The client never closes: the stop closes the idle connection at once.
            running.stop()
            with trio.fail_after(5):  # the grace period is 10 s
                await stopped.wait()
                assert await client.closed_by_server()


async def test_a_client_leaving_mid_download_stops_the_stream_quietly(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    running = await start_server(run_daemon=False)
    assert running.url is not None
    async with httpx.AsyncClient(base_url=running.url) as api:
        lines = [chat_line(f"c{i}", content="z" * 200) for i in range(5000)]
        uploaded = await api.post(
            "/v1/files", files={"file": ("in.jsonl", jsonl(lines))}, data={"purpose": "batch"}
        )
        file_id = uploaded.json()["id"]
        client = await Client.connect(running)
        async with client.stream:
            await client.request("GET", f"/v1/files/{file_id}/content", [])
            await client.send(h11.EndOfMessage())
            while not isinstance(client.h11.next_event(), h11.Data):
                client.h11.receive_data(await client.stream.receive_some(65536))
        # gone after the first chunk; the server goes on serving
        assert (await api.get("/readyz")).status_code == 200
        again = await api.get(f"/v1/files/{file_id}/content")
        assert again.content.count(b"\n") == 5000
    assert [r for r in fusillade_records(caplog) if r.levelno >= logging.WARNING] == []
