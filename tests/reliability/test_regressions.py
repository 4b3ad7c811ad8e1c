"""Regression tests for the defects the reliability scenarios found (docs/reliability.md).

Each is named after what broke, and reproduces it in isolation, fast.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest
import trio
from helpers import daemon_config, make_batch, poll_until, wait_status

from fusillade.config import ServerSettings, Settings
from fusillade.errors import StoreUnavailable
from fusillade.mock_upstream import Behaviour, MockUpstream
from fusillade.runtime.daemon import Daemon
from fusillade.server import app
from fusillade.server.serve import Running, serve
from fusillade.store.memory import MemoryRepository
from fusillade.store.postgres import PostgresRepository


class HangingRepository(MemoryRepository):
    """A repository whose ping waits (like a pool waiting for a connection) until released."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def ping(self, timeout: float = 5.0) -> None:
        self.release.wait(30)
        raise StoreUnavailable("database unavailable: test")


async def test_readyz_hung_for_the_pool_timeout_while_the_database_was_down(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The probe waited for its worker thread (up to the pool's 30 s) although its own
    # timeout had passed: a thread cannot be cancelled, so it must be abandoned.
    monkeypatch.setattr(app, "READY_TIMEOUT", 0.5)
    repo = HangingRepository()
    settings = Settings(database_url="unused", server=ServerSettings(port=0))
    running: Running = await nursery.start(
        lambda task_status: serve(
            settings, repository=repo, run_daemon=False, task_status=task_status
        )
    )
    assert running.url is not None
    try:
        async with httpx.AsyncClient(base_url=running.url, timeout=20) as c:
            asked = trio.current_time()
            ready = await c.get("/readyz")
            took = trio.current_time() - asked
            assert ready.status_code == 503
            assert ready.json()["database"] is False
            assert took < 3.0, took
    finally:
        repo.release.set()
        running.stop()


def test_ping_waited_the_pools_30_s_for_a_connection_to_a_stopped_server(
    tmp_path: Path,
) -> None:
    # Nothing listens in tmp_path: every connection attempt is refused at once, so
    # without a timeout of its own the ping waited for the pool's (30 s).
    repo = PostgresRepository(f"postgresql://postgres@/postgres?host={tmp_path}", min_size=0)
    repo.open(wait=False)
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            repo.ping(timeout=0.5)
        assert time.monotonic() - started < 3.0
    finally:
        repo.close()


async def test_writer_died_when_a_flush_waited_longer_than_db_call_timeout(
    repo: PostgresRepository, mock_upstream: MockUpstream, nursery: trio.Nursery
) -> None:
    # During an outage every worker thread of the daemon waits on the pool; a result
    # flush then waits for a thread longer than db_call_timeout and gets TimeoutError,
    # which the writer did not retry: the daemon (and `serve` with it) crashed.
    mock_upstream.config.default = Behaviour(hold=True)
    batch = await make_batch(repo, 6)
    daemon = Daemon(repo, daemon_config(mock_upstream, db_call_timeout=0.2))
    await nursery.start(daemon.run)
    with trio.fail_after(10):
        await mock_upstream.wait_until(lambda s: s.in_flight_total == 6)
    limiter = daemon.repo._limiter
    borrowers = [object() for _ in range(int(limiter.total_tokens))]
    for borrower in borrowers:  # every thread "busy", as in an outage
        await limiter.acquire_on_behalf_of(borrower)
    mock_upstream.release_held()  # six results now wait for a flush
    await poll_until(lambda: daemon.writer.failures_in_a_row, timeout=10, interval=0.02)
    for borrower in borrowers:
        limiter.release_on_behalf_of(borrower)
    view = await wait_status(repo, batch, timeout=20)
    assert view.counts.completed == 6
    daemon.stop()


async def test_json_body_that_was_not_utf8_answered_500(api: httpx.AsyncClient) -> None:
    # msgspec raises UnicodeDecodeError (not its DecodeError) for a string that is not
    # UTF-8, and Litestar passed it through: an internal error instead of a 400.
    for path in ("/v1/batches", "/v1/batches/batch_" + "0" * 32 + "/cancel"):
        response = await api.post(
            path,
            content=b'{"input_file_id": "file-\xff", "endpoint": "/v1/chat/completions"}',
            headers={"content-type": "application/json"},
        )
        assert response.status_code in (400, 404), response.text
        assert response.json()["error"]["type"] == "invalid_request_error"
    response = await api.post(
        "/v1/batches", content=b'{"a": "\xc3\x28"}', headers={"content-type": "application/json"}
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_encoding"
    assert (await api.get("/readyz")).status_code == 200


async def test_json_body_errors_are_decided_by_the_server_not_by_a_librarys_message(
    api: httpx.AsyncClient,
) -> None:
    # msgspec 0.23 reworded its invalid UTF-8 error and raised DecodeError where an older
    # release raised UnicodeDecodeError: the answer changed with the library. The server
    # now reads and checks JSON bodies itself before Litestar decodes them.
    cases = [
        (b'{"a": "\xc3\x28"}', "invalid_encoding"),  # inside a string
        (b'{"a": 1}\xff', "invalid_encoding"),  # outside any string
        (b'\xef\xbb\xbf{"a": 1}', "invalid_json"),  # a byte order mark
        (b"[" * 100_000 + b"]" * 100_000, "invalid_json"),
        (b'{"metadata": ' + b"[" * 65 + b"]" * 65 + b"}", "invalid_json"),
        (b'{"a": 1, "a": 2}', "invalid_json"),
        (b'{"a": NaN}', "invalid_json"),
        (b"{not json", "invalid_json"),
    ]
    for body, code in cases:
        response = await api.post(
            "/v1/batches", content=body, headers={"content-type": "application/json"}
        )
        assert response.status_code == 400, (body[:40], response.text)
        assert response.json()["error"]["code"] == code, (body[:40], response.text)
    assert (await api.get("/v1/batches")).json()["data"] == []
    assert (await api.get("/readyz")).status_code == 200
