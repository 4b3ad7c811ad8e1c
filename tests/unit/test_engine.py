"""The engine's rules, on the in-memory repository (no database).

The same rules serve the HTTP API (tests/server/test_engine_adapters.py holds the two
equal); here: what a library caller's engine accepts by default and under ``Rules``.
"""

from __future__ import annotations

import json

import pytest

from fusillade.core.models import RequestTemplate
from fusillade.core.results import format_input_line
from fusillade.engine import MAX_METADATA_PAIRS, Engine, Rules
from fusillade.errors import NotFound, ValidationError
from fusillade.store.memory import MemoryRepository

CUSTOM = "/v1/my/endpoint"


def templates(n: int, path: str = "/v1/chat/completions") -> list[RequestTemplate]:
    body = json.dumps({"model": "m", "messages": []})
    return [RequestTemplate(f"r{i}", "m", body, path=path) for i in range(n)]


async def test_a_library_engine_takes_any_endpoint_and_window_but_not_bad_metadata() -> None:
    engine = Engine(MemoryRepository())
    file = await engine.create_file(templates(2, CUSTOM))
    batch = await engine.create_batch(file.id, endpoint=CUSTOM, completion_window="90m")
    assert batch.record.endpoint == CUSTOM
    too_many = {str(i): "v" for i in range(MAX_METADATA_PAIRS + 1)}
    with pytest.raises(ValidationError) as refused:
        await engine.create_batch(file.id, endpoint=CUSTOM, metadata=too_many)
    assert refused.value.param == "metadata"
    assert [b.record.id for b in (await engine.list_batches()).items] == [batch.record.id]


async def test_rules_limit_endpoints_and_windows_before_the_file_is_looked_up() -> None:
    rules = Rules(endpoints=("/v1/chat/completions",), completion_windows=("24h",))
    engine = Engine(MemoryRepository(), rules=rules)
    with pytest.raises(ValidationError) as refused:
        await engine.create_batch("file-nonsense", endpoint=CUSTOM)
    assert refused.value.param == "endpoint"
    with pytest.raises(ValidationError) as refused:
        await engine.create_batch("file-nonsense", completion_window="48h")
    assert refused.value.param == "completion_window"
    with pytest.raises(NotFound):
        await engine.create_batch("file-nonsense")


async def test_public_ids_and_cursors() -> None:
    engine = Engine(MemoryRepository())
    file = await engine.create_file(templates(1))
    public = "file-" + file.id.hex
    assert (await engine.get_file(public)).id == file.id
    for malformed in ("file-" + file.id.hex.upper(), "batch_" + file.id.hex, "x"):
        with pytest.raises(NotFound):
            await engine.get_file(malformed)
    with pytest.raises(ValidationError) as refused:
        await engine.list_files(after="batch_" + file.id.hex)
    assert refused.value.param == "after"
    assert (await engine.list_files(after=public)).items == ()


async def test_owners_see_only_their_own() -> None:
    engine = Engine(MemoryRepository())
    file = await engine.create_file(templates(1))
    with pytest.raises(NotFound):
        await engine.for_owner("someone else").get_file(file.id)


async def test_an_input_file_content_is_its_lines() -> None:
    engine = Engine(MemoryRepository())
    lines = templates(2500)  # more than one chunk
    file = await engine.create_file(lines)
    content = await engine.file_content(file.id)
    assert content.record.id == file.id
    got = b"".join([chunk async for chunk in content])
    assert got == "".join(format_input_line(t) + "\n" for t in lines).encode()
