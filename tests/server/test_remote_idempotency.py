"""``fusillade submit --server``: its creates carry an ``Idempotency-Key``, and a create
whose reply was lost (after the server committed) or that got a 5xx is retried with the
same key, so the retried command makes one file and one batch."""

from __future__ import annotations

from pathlib import Path

import httpx
import psycopg
import pytest
import trio
from serverkit import StartServer, chat_line, fusillade, jsonl

from fusillade.cli.remote import HttpBackend
from fusillade.config import ApiKey
from fusillade.errors import FusilladeError
from fusillade.mock_upstream import MockUpstream
from fusillade.server.serve import Running

KEY = "sk-remote-idem-key"


@pytest.fixture
async def keyed(
    start_server: StartServer, mock_upstream: MockUpstream, monkeypatch: pytest.MonkeyPatch
) -> Running:
    monkeypatch.setenv("FUSILLADE_TEST_KEY_IDEM", KEY)
    api_keys = [ApiKey("FUSILLADE_TEST_KEY_IDEM", "cli")]
    return await start_server(mock_upstream.url, api_keys=api_keys, run_daemon=False)


def rows(database_url: str, query: str) -> list[tuple[object, ...]]:
    with psycopg.connect(database_url) as conn:
        return conn.execute(query).fetchall()


class Flaky(httpx.BaseTransport):
    """Sends every request on to the server; the first reply of each POST path is lost
    (``lose``: a reset after the server committed) or replaced by a 503 without sending
    (``refuse``). Records each POST's path and Idempotency-Key."""

    def __init__(self, *, lose: set[str], refuse: set[str]) -> None:
        self.inner = httpx.HTTPTransport()
        self.lose, self.refuse = set(lose), set(refuse)
        self.posts: list[tuple[str, str | None]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if request.method == "POST":
            self.posts.append((path, request.headers.get("idempotency-key")))
            if path in self.refuse:
                self.refuse.discard(path)
                request.read()
                return httpx.Response(503, json={"error": {"message": "try again"}})
        response = self.inner.handle_request(request)
        if request.method == "POST" and path in self.lose:
            self.lose.discard(path)
            response.read()
            response.close()
            raise httpx.ReadError("connection reset by peer", request=request)
        return response

    def close(self) -> None:
        self.inner.close()


@pytest.mark.parametrize("fault", ["lose", "refuse"])
async def test_a_retried_submit_makes_one_batch(
    keyed: Running, database_url: str, tmp_path: Path, fault: str
) -> None:
    assert keyed.url is not None
    source = tmp_path / "in.jsonl"
    source.write_bytes(jsonl(chat_line(f"c{i}") for i in range(4)))
    paths = {"/v1/files", "/v1/batches"}
    none: set[str] = set()
    transport = Flaky(
        lose=paths if fault == "lose" else none, refuse=paths if fault == "refuse" else none
    )
    backend = HttpBackend(keyed.url, KEY, delays=(0, 0), transport=transport)
    try:
        batch = await trio.to_thread.run_sync(
            backend.submit, source, "/v1/chat/completions", "24h", None
        )
    finally:
        backend.close()
    assert [p for p, _ in transport.posts] == ["/v1/files"] * 2 + ["/v1/batches"] * 2
    file_keys = {k for p, k in transport.posts if p == "/v1/files"}
    batch_keys = {k for p, k in transport.posts if p == "/v1/batches"}
    assert len(file_keys) == len(batch_keys) == 1  # one key per create, kept on retry
    assert file_keys != batch_keys and None not in file_keys | batch_keys
    assert rows(database_url, "SELECT count(*) FROM files WHERE purpose = 'batch'") == [(1,)]
    assert rows(database_url, "SELECT count(*) FROM batches") == [(1,)]
    assert batch["request_counts"]["total"] == 4


async def test_retries_are_bounded(keyed: Running, tmp_path: Path) -> None:
    assert keyed.url is not None
    source = tmp_path / "in.jsonl"
    source.write_bytes(jsonl([chat_line("c")]))

    class Down(Flaky):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            self.posts.append((request.url.path, request.headers.get("idempotency-key")))
            request.read()
            return httpx.Response(503, json={"error": {"message": "the database is down"}})

    transport = Down(lose=set(), refuse=set())
    backend = HttpBackend(keyed.url, KEY, delays=(0, 0, 0), transport=transport)
    try:
        with pytest.raises(FusilladeError, match="the server answered 503: the database is down"):
            await trio.to_thread.run_sync(
                backend.submit, source, "/v1/chat/completions", "24h", None
            )
    finally:
        backend.close()
    assert len(transport.posts) == 4


async def test_the_submit_command_sends_keys(
    keyed: Running, database_url: str, tmp_path: Path
) -> None:
    assert keyed.url is not None
    source = tmp_path / "in.jsonl"
    source.write_bytes(jsonl(chat_line(f"c{i}") for i in range(2)))
    code, _, err = await fusillade(
        "submit", str(source), "--server", keyed.url, env={"FUSILLADE_API_KEY": KEY}
    )
    assert code == 0, err
    keys = rows(database_url, "SELECT owner, key, fingerprint FROM idempotency_keys ORDER BY key")
    assert [(o, f.split(":")[0]) for o, _, f in keys] == [("cli", "batch"), ("cli", "file")]
    assert all(str(k).startswith("fusillade-submit-") for _, k, _ in keys)
