"""OpenAI wire fidelity, through the official SDK with strict response validation.

The SDK's ``_strict_response_validation=True`` checks every answer against its own types
(a File's ``purpose`` must be one of OpenAI's names), as a careful client would.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import psycopg
import pytest
import trio
from serverkit import base_url, chat_line, jsonl, settings_for, wait_status

from fusillade.mock_upstream import Behaviour, MockUpstream
from fusillade.server.serve import Running, serve
from fusillade.store.memory import MemoryRepository

TERMINAL = {"completed", "failed", "expired", "cancelled"}


@pytest.fixture
async def strict(server: Running) -> AsyncIterator[openai.AsyncOpenAI]:
    """The SDK validating every answer against its own types."""
    async with openai.AsyncOpenAI(
        base_url=base_url(server), api_key="any", max_retries=0, _strict_response_validation=True
    ) as c:
        yield c


async def _batch_with_a_failure(
    client: openai.AsyncOpenAI, mock_upstream: MockUpstream
) -> tuple[str, Any]:
    """A completed batch with two successes and one upstream 400; returns (file id, batch)."""
    mock_upstream.config.per_model["bad"] = Behaviour(status=400)
    lines = [chat_line("ok1"), chat_line("no1", model="bad"), chat_line("ok2", content="é ✓")]
    uploaded = await client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
    batch = await client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    done = await wait_status(client, batch.id, TERMINAL)
    assert done.status == "completed"
    assert done.output_file_id is not None and done.error_file_id is not None
    return uploaded.id, done


async def test_error_files_have_purpose_batch_output_under_strict_validation(
    strict: openai.AsyncOpenAI, mock_upstream: MockUpstream
) -> None:
    input_id, done = await _batch_with_a_failure(strict, mock_upstream)

    error_file = await strict.files.retrieve(done.error_file_id)
    assert error_file.purpose == "batch_output"
    listed = {f.id: f.purpose async for f in strict.files.list()}
    assert listed == {
        input_id: "batch",
        done.output_file_id: "batch_output",
        done.error_file_id: "batch_output",
    }
    # purpose=batch_output lists both kinds of result file; batch_error only error files
    outputs = {f.id async for f in strict.files.list(purpose="batch_output")}
    assert outputs == {done.output_file_id, done.error_file_id}
    errors = {f.id async for f in strict.files.list(purpose="batch_error")}
    assert errors == {done.error_file_id}


async def _sizes(client: openai.AsyncOpenAI, *file_ids: str) -> dict[str, tuple[int, int]]:
    """Each file's (``bytes`` from retrieve, length of its downloaded content)."""
    listed = {f.id: f.bytes async for f in client.files.list()}
    out = {}
    for file_id in file_ids:
        retrieved = await client.files.retrieve(file_id)
        assert listed[file_id] == retrieved.bytes
        content = await client.files.content(file_id)
        out[file_id] = (retrieved.bytes, len(content.content))
    return out


async def test_result_file_bytes_are_the_downloaded_size_once_complete_and_after_a_retry(
    strict: openai.AsyncOpenAI, http: httpx.AsyncClient, mock_upstream: MockUpstream
) -> None:
    _, done = await _batch_with_a_failure(strict, mock_upstream)
    out_id, err_id = done.output_file_id, done.error_file_id
    sizes = await _sizes(strict, out_id, err_id)
    assert all(size == length > 0 for size, length in sizes.values()), sizes

    # A retry makes the batch incomplete again; once it completes, the sizes are new.
    mock_upstream.config.per_model.pop("bad")
    retried = await http.post(f"/v1/batches/{done.id}/retry")  # extension: not in the SDK
    assert retried.status_code == 200, retried.text
    again = await wait_status(strict, done.id, TERMINAL)
    assert again.request_counts is not None and again.request_counts.failed == 0
    resized = await _sizes(strict, out_id, err_id)
    assert resized[err_id] == (0, 0)
    size, length = resized[out_id]
    assert size == length > sizes[out_id][1]


async def test_not_found_names_the_id_the_client_sent(
    strict: openai.AsyncOpenAI, http: httpx.AsyncClient
) -> None:
    hidden = uuid.uuid4()
    cases = [
        (strict.files.retrieve(f"file-{hidden.hex}"), f"file-{hidden.hex}"),
        (strict.files.content(f"file-{hidden.hex}"), f"file-{hidden.hex}"),
        (strict.batches.retrieve(f"batch_{hidden.hex}"), f"batch_{hidden.hex}"),
        (strict.batches.cancel(f"batch_{hidden.hex}"), f"batch_{hidden.hex}"),
        (
            strict.batches.create(
                input_file_id=f"file-{hidden.hex}",
                endpoint="/v1/chat/completions",
                completion_window="24h",
            ),
            f"file-{hidden.hex}",
        ),
    ]
    for call, sent in cases:
        with pytest.raises(openai.NotFoundError) as caught:
            await call
        message = caught.value.message
        assert sent in message
        assert str(hidden) not in message  # never the internal uuid

    # Oversized ids (a path as long as the server takes, a body's much longer) and an
    # oversized unknown path are quoted by a bounded prefix only.
    huge = "file-" + "x" * 100_000
    with pytest.raises(openai.NotFoundError) as caught:
        await strict.batches.create(
            input_file_id=huge, endpoint="/v1/chat/completions", completion_window="24h"
        )
    assert huge[:50] in caught.value.message and len(caught.value.message) < 200
    long = "file-" + "x" * 8_000
    answer = await http.get(f"/v1/files/{long}")
    assert answer.status_code == 404
    message = answer.json()["error"]["message"]
    assert long[:50] in message and len(message) < 200
    unknown = await http.get("/v1/" + "y" * 8_000)
    assert unknown.status_code == 404
    assert len(unknown.json()["error"]["message"]) < 200


async def test_files_list_order_asc_pages_oldest_first(strict: openai.AsyncOpenAI) -> None:
    ids = []
    for i in range(4):
        data = jsonl([chat_line(f"c{i}")])
        ids.append((await strict.files.create(file=(f"{i}.jsonl", data), purpose="batch")).id)
    ascending = [f.id async for f in strict.files.list(order="asc", limit=1)]
    assert ascending == ids
    descending = [f.id async for f in strict.files.list(order="desc", limit=3)]
    assert descending == ids[::-1]
    page = await strict.files.list(order="asc", after=ids[1], limit=1)
    assert [f.id for f in page.data] == [ids[2]] and page.has_more


async def test_every_answer_carries_an_x_request_id(
    strict: openai.AsyncOpenAI, http: httpx.AsyncClient
) -> None:
    uploaded = await strict.files.with_raw_response.create(
        file=("in.jsonl", jsonl([chat_line("a")])), purpose="batch"
    )
    first = uploaded.request_id
    assert first is not None and first.startswith("req_")
    listed = await strict.files.list()
    assert listed._request_id is not None and listed._request_id != first
    with pytest.raises(openai.NotFoundError) as caught:
        await strict.files.retrieve("file-nope")
    assert caught.value.request_id is not None and caught.value.request_id.startswith("req_")
    # Answers made before any route runs: unknown path, wrong method, health.
    for method, path in (("GET", "/nowhere"), ("PUT", "/v1/files"), ("GET", "/healthz")):
        answer = await http.request(method, path, headers={"x-request-id": "mine"})
        found = answer.headers.get_list("x-request-id")
        assert len(found) == 1 and found[0].startswith("req_"), (path, found)


class BrokenRepository(MemoryRepository):
    def list_batches(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom")


async def test_the_request_id_is_in_the_log_line_of_an_error(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="fusillade.server")
    running: Running = await nursery.start(
        lambda task_status: serve(
            settings_for("unused", None),
            repository=BrokenRepository(),
            run_daemon=False,
            task_status=task_status,
        )
    )
    async with openai.AsyncOpenAI(
        base_url=base_url(running), api_key="any", max_retries=0, _strict_response_validation=True
    ) as client:
        with pytest.raises(openai.InternalServerError) as caught:
            await client.batches.list()
    request_id = caught.value.request_id
    assert request_id is not None and request_id.startswith("req_")
    logged = [r.getMessage() for r in caplog.records if r.name == "fusillade.server"]
    assert any(request_id in line for line in logged), logged
    running.stop()


async def test_a_download_does_not_first_read_the_whole_file_to_size_it(
    strict: openai.AsyncOpenAI, server: Running, mock_upstream: MockUpstream
) -> None:
    # Working out a finished batch's file size reads every result; a download that did
    # so before streaming read its results twice (P5 over HTTP: half the lines/s).
    _, done = await _batch_with_a_failure(strict, mock_upstream)
    assert server.database_url is not None

    def sized() -> list[object]:
        with psycopg.connect(server.database_url) as conn:
            return [r[0] for r in conn.execute("SELECT sized_version FROM batches").fetchall()]

    content = await strict.files.content(done.output_file_id)
    assert content.content.count(b"\n") == 2
    assert sized() == [None]  # the download sized nothing
    retrieved = await strict.files.retrieve(done.output_file_id)
    assert retrieved.bytes == len(content.content)
    assert sized() == [0]  # the retrieve did (version 0, no retry)
