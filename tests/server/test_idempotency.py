"""``Idempotency-Key`` on ``POST /v1/files`` and ``POST /v1/batches`` over real HTTP and
PostgreSQL: replays, 409s, owners, concurrent creates with one key, a crash between the
commit and the reply, expiry."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
import trio
from serverkit import StartServer, chat_line, jsonl, openai_client

from fusillade.config import ApiKey
from fusillade.core.idempotency import IDEMPOTENCY_TTL
from fusillade.engine import Engine
from fusillade.errors import Conflict
from fusillade.mock_upstream import MockUpstream
from fusillade.server.serve import Running
from fusillade.store.postgres import PostgresRepository

KEYS = {"alice": "sk-alice-idem-0123456789", "bob": "sk-bob-idem-9876543210"}
API_KEYS = [ApiKey(f"FUSILLADE_TEST_KEY_{o.upper()}", o) for o in KEYS]
DATA = jsonl(chat_line(f"c{i}") for i in range(3))


@pytest.fixture
async def keyed(
    start_server: StartServer, mock_upstream: MockUpstream, monkeypatch: pytest.MonkeyPatch
) -> Running:
    for key, owner in zip(API_KEYS, KEYS, strict=True):
        monkeypatch.setenv(key.key_env, KEYS[owner])
    # no daemon: the tests count rows, and batches stay as created
    return await start_server(mock_upstream.url, api_keys=API_KEYS, run_daemon=False)


@pytest.fixture
async def as_alice(keyed: Running) -> AsyncIterator[httpx.AsyncClient]:
    async with _client(keyed, "alice") as c:
        yield c


def _client(running: Running, owner: str) -> httpx.AsyncClient:
    assert running.url is not None
    headers = {"authorization": f"Bearer {KEYS[owner]}"}
    return httpx.AsyncClient(base_url=running.url + "/v1", headers=headers, timeout=60)


async def upload(
    http: httpx.AsyncClient, key: str | None, data: bytes = DATA, name: str = "in.jsonl"
) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key is not None else {}
    files = {"file": (name, data, "application/jsonl")}
    return await http.post("/files", files=files, data={"purpose": "batch"}, headers=headers)


async def create(http: httpx.AsyncClient, key: str | None, **body: Any) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key is not None else {}
    payload = {"endpoint": "/v1/chat/completions", "completion_window": "24h", **body}
    return await http.post("/batches", json=payload, headers=headers)


def count(database_url: str, table: str, owner: str = "alice") -> int:
    query = {
        "files": "SELECT count(*) FROM files WHERE owner = %s AND purpose = 'batch'",
        "batches": "SELECT count(*) FROM batches WHERE owner = %s",
        "keys": "SELECT count(*) FROM idempotency_keys WHERE owner = %s",
    }[table]
    with psycopg.connect(database_url) as conn:
        row = conn.execute(query, (owner,)).fetchone()
    assert row is not None
    return int(row[0])


async def test_the_same_request_with_a_key_creates_once(
    as_alice: httpx.AsyncClient, database_url: str
) -> None:
    first = await upload(as_alice, "upload-1")
    again = await upload(as_alice, "upload-1")
    assert first.status_code == again.status_code == 200, first.text
    assert again.json() == first.json()
    assert count(database_url, "files") == 1
    file_id = first.json()["id"]

    made = await create(as_alice, "batch-1", input_file_id=file_id, metadata={"k": "v"})
    replayed = await create(as_alice, "batch-1", input_file_id=file_id, metadata={"k": "v"})
    assert made.status_code == replayed.status_code == 200, made.text
    assert replayed.json()["id"] == made.json()["id"]
    assert replayed.json()["request_counts"]["total"] == 3
    assert count(database_url, "batches") == 1
    # without a key, the same request is a new batch (as at OpenAI)
    assert (await create(as_alice, None, input_file_id=file_id)).status_code == 200
    assert count(database_url, "batches") == 2


async def test_a_different_request_under_a_key_is_a_409(
    as_alice: httpx.AsyncClient, database_url: str
) -> None:
    file_id = (await upload(as_alice, "u")).json()["id"]
    assert (await upload(as_alice, "u", name="other.jsonl")).status_code == 409
    other = await upload(as_alice, "u", data=jsonl([chat_line("z")]))
    assert other.status_code == 409
    error = other.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "conflict"
    assert "Idempotency-Key 'u' was already used for a different request" in error["message"]

    assert (await create(as_alice, "b", input_file_id=file_id)).status_code == 200
    changed = await create(as_alice, "b", input_file_id=file_id, completion_window="1h")
    assert changed.status_code in (400, 409)  # 1h may not be allowed: a 400 comes first
    changed = await create(as_alice, "b", input_file_id=file_id, metadata={"x": "y"})
    assert changed.status_code == 409
    # a key of an upload, used for a batch
    assert (await create(as_alice, "u", input_file_id=file_id)).status_code == 409
    assert count(database_url, "batches") == 1
    assert count(database_url, "files") == 1


async def test_keys_are_per_owner(keyed: Running, database_url: str) -> None:
    async with _client(keyed, "alice") as alice, _client(keyed, "bob") as bob:
        a = (await upload(alice, "shared")).json()["id"]
        b = (await upload(bob, "shared")).json()["id"]
        assert a != b
        # bob's key of the same name, with another request: his own, no conflict
        other = await upload(bob, "shared-2", data=jsonl([chat_line("z")]))
        assert other.status_code == 200
        ba = await create(alice, "k", input_file_id=a)
        bb = await create(bob, "k", input_file_id=b, metadata={"who": "bob"})
        assert ba.status_code == bb.status_code == 200
        assert ba.json()["id"] != bb.json()["id"]
    assert count(database_url, "batches", "alice") == count(database_url, "batches", "bob") == 1


@pytest.mark.parametrize("key", ["", "x" * 256])
async def test_an_empty_or_long_key_is_a_400(as_alice: httpx.AsyncClient, key: str) -> None:
    for response in (
        await upload(as_alice, key),
        await create(as_alice, key, input_file_id="file-" + "0" * 32),
    ):
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["param"] == "Idempotency-Key"
        assert "1 to 255 characters" in error["message"]


async def test_a_key_of_255_characters_is_accepted(as_alice: httpx.AsyncClient) -> None:
    assert (await upload(as_alice, "k" * 255)).status_code == 200


async def test_concurrent_creates_with_one_key_make_one_batch(
    as_alice: httpx.AsyncClient, database_url: str
) -> None:
    n = 8
    big = jsonl(chat_line(f"c{i}", content="x" * 200) for i in range(5000))
    uploads: list[httpx.Response] = []
    batches: list[httpx.Response] = []

    async def one_upload() -> None:
        uploads.append(await upload(as_alice, "same-upload", data=big))

    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(one_upload)
    assert [r.status_code for r in uploads] == [200] * n, uploads[0].text
    assert len({r.json()["id"] for r in uploads}) == 1
    assert count(database_url, "files") == 1
    file_id = uploads[0].json()["id"]

    async def one_batch() -> None:
        batches.append(await create(as_alice, "same-batch", input_file_id=file_id))

    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(one_batch)
    assert [r.status_code for r in batches] == [200] * n, batches[0].text
    assert len({r.json()["id"] for r in batches}) == 1
    assert count(database_url, "batches") == 1
    assert count(database_url, "keys") == 2


async def test_the_openai_sdk_sends_a_key_as_an_extra_header(
    keyed: Running, database_url: str
) -> None:
    """The SDK sends no ``Idempotency-Key`` of its own (OpenAI's client sets no
    idempotency header); given as an extra header, it works, also across the SDK's
    retries."""
    async with openai_client(keyed, KEYS["alice"]) as client:
        headers = {"Idempotency-Key": "sdk-1"}
        stored = await client.files.create(
            file=("in.jsonl", DATA), purpose="batch", extra_headers=headers
        )
        again = await client.files.create(
            file=("in.jsonl", DATA), purpose="batch", extra_headers=headers
        )
        assert again.id == stored.id
        made = await client.batches.create(
            input_file_id=stored.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            extra_headers={"Idempotency-Key": "sdk-2"},
        )
        replayed = await client.batches.create(
            input_file_id=stored.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            extra_headers={"Idempotency-Key": "sdk-2"},
        )
        assert replayed.id == made.id
    assert count(database_url, "batches") == 1


async def test_a_retry_after_a_crash_between_commit_and_reply(database_url: str) -> None:
    """The create committed, then its process died before answering: a new process (a
    new engine on the same database) given the retry answers with that batch."""
    with PostgresRepository(database_url) as repo:
        crashed = Engine(repo, owner="alice")
        file = await crashed.create_file(io.BytesIO(DATA), filename="in.jsonl")
        await crashed.create_batch(file.id, idempotency_key="k")  # the reply is lost
    with PostgresRepository(database_url) as repo:
        retried = await Engine(repo, owner="alice").create_batch(file.id, idempotency_key="k")
        batches = await Engine(repo, owner="alice").list_batches()
    assert [b.record.id for b in batches.items] == [retried.record.id]


async def test_a_key_expires_after_its_time(database_url: str) -> None:
    clock = [datetime.now(UTC)]
    with PostgresRepository(database_url) as repo:
        engine = Engine(repo, owner="alice", clock=lambda: clock[0])
        file = await engine.create_file(io.BytesIO(DATA))
        first = await engine.create_batch(file.id, idempotency_key="k")
        clock[0] += IDEMPOTENCY_TTL - timedelta(seconds=1)
        with pytest.raises(Conflict):
            await engine.create_batch(file.id, idempotency_key="k", metadata={"a": "b"})
        clock[0] += timedelta(seconds=2)
        later = await engine.create_batch(file.id, idempotency_key="k", metadata={"a": "b"})
        assert later.record.id != first.record.id
        again = await engine.create_batch(file.id, idempotency_key="k", metadata={"a": "b"})
        assert again.record.id == later.record.id
