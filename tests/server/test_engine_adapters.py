"""The routes are adapters over the engine: the rules and the content are the engine's.

A library caller (``fusillade.open``) and the HTTP API share one database here; what one
refuses the other refuses with the same message and parameter, and a file's content as
the engine renders it is byte for byte what ``GET /v1/files/{id}/content`` sends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from serverkit import StartServer, chat_line, jsonl, wait_status_json

import fusillade
from fusillade.engine import Content, Engine
from fusillade.errors import ValidationError
from fusillade.mock_upstream import Behaviour, MockUpstream

BAD_METADATA = {
    "too many pairs": {f"k{i}": "v" for i in range(17)},
    "a long key": {"k" * 65: "v"},
    "a long value": {"k": "v" * 513},
    "a NUL": {"k": "v\x00"},
}


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[Engine]:
    async with fusillade.open(database_url, run_daemon=False, migrate=False) as engine:
        yield engine


async def upload(api: httpx.AsyncClient, lines: list[dict[str, object]]) -> str:
    uploaded = await api.post(
        "/v1/files", files={"file": ("in.jsonl", jsonl(lines))}, data={"purpose": "batch"}
    )
    assert uploaded.status_code == 200, uploaded.text
    return str(uploaded.json()["id"])


@pytest.mark.parametrize("case", sorted(BAD_METADATA))
async def test_library_and_api_refuse_bad_metadata_alike(
    case: str, start_server: StartServer, engine: Engine
) -> None:
    metadata = BAD_METADATA[case]
    running = await start_server(run_daemon=False)
    assert running.url is not None
    async with httpx.AsyncClient(base_url=running.url) as api:
        file_id = await upload(api, [chat_line("a")])
        body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions"}
        answer = await api.post(
            "/v1/batches", json={**body, "completion_window": "24h", "metadata": metadata}
        )
    assert answer.status_code == 400
    error = answer.json()["error"]
    with pytest.raises(ValidationError) as refused:
        await engine.create_batch(file_id, metadata=metadata)
    assert (refused.value.message, refused.value.param) == (error["message"], error["param"])
    assert error["param"] == "metadata"
    assert (await engine.list_batches()).items == ()  # nothing was created either way


async def test_engine_content_is_what_the_server_serves(
    start_server: StartServer, mock_upstream: MockUpstream, engine: Engine
) -> None:
    mock_upstream.config.per_model["bad"] = Behaviour(status=400)
    running = await start_server(mock_upstream.url)
    assert running.url is not None
    lines = [chat_line(f"r{i}", model="bad" if i % 3 == 0 else "m") for i in range(7)]
    async with httpx.AsyncClient(base_url=running.url, timeout=30) as api:
        file_id = await upload(api, lines)
        body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions"}
        created = await api.post("/v1/batches", json={**body, "completion_window": "24h"})
        assert created.status_code == 200, created.text
        batch = await wait_status_json(api, created.json()["id"], "completed")
        for kind in ("input_file_id", "output_file_id", "error_file_id"):
            served = await api.get(f"/v1/files/{batch[kind]}/content")
            assert served.status_code == 200
            content = await engine.file_content(batch[kind])
            assert await read_all(content) == served.content, kind
            assert served.content.count(b"\n") == {"input_file_id": 7}.get(
                kind, 4 if kind == "output_file_id" else 3
            )


async def read_all(content: Content) -> bytes:
    return b"".join([chunk async for chunk in content])
