"""End to end with the official SDK: upload, create, poll, download; cancel; list; retry."""

from __future__ import annotations

import json

import openai
from helpers import poll_until
from serverkit import chat_line, jsonl, wait_status

from fusillade.mock_upstream import Behaviour, MockUpstream
from fusillade.server.serve import Running


async def upload(client: openai.AsyncOpenAI, data: bytes, name: str = "in.jsonl") -> str:
    stored = await client.files.create(file=(name, data), purpose="batch")
    assert stored.purpose == "batch"
    assert stored.bytes == len(data)
    assert stored.filename == name
    return stored.id


async def content_lines(client: openai.AsyncOpenAI, file_id: str) -> list[dict[str, object]]:
    response = await client.files.content(file_id)
    text = response.text
    assert text == "" or text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


async def test_full_batch(client: openai.AsyncOpenAI, mock_upstream: MockUpstream) -> None:
    n = 40
    data = jsonl(chat_line(f"c{i}", content=f"hello {i}") for i in range(n))
    file_id = await upload(client, data)

    batch = await client.batches.create(
        input_file_id=file_id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"project": "demo"},
    )
    assert batch.id.startswith("batch_")
    assert batch.input_file_id == file_id
    assert batch.metadata == {"project": "demo"}
    assert batch.request_counts is not None and batch.request_counts.total == n

    done = await wait_status(client, batch.id, {"completed", "failed", "expired", "cancelled"})
    assert done.status == "completed"
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (n, 0)
    assert done.output_file_id is not None
    assert done.error_file_id is None
    assert done.completed_at is not None and done.completed_at >= done.created_at
    assert done.usage is not None and done.usage.total_tokens > 0

    lines = await content_lines(client, done.output_file_id)
    assert sorted(str(line["custom_id"]) for line in lines) == sorted(f"c{i}" for i in range(n))
    for line in lines:
        assert line["error"] is None
        response = line["response"]
        assert isinstance(response, dict) and response["status_code"] == 200
        assert str(line["id"]).startswith("batch_req_")

    # The input file comes back as the lines that were stored.
    again = await content_lines(client, file_id)
    assert again == [json.loads(raw) for raw in data.splitlines()]

    files = [f async for f in client.files.list()]
    ids = {f.id for f in files}
    assert {file_id, done.output_file_id} <= ids
    output = await client.files.retrieve(done.output_file_id)
    assert output.purpose == "batch_output"


async def test_failed_lines_go_to_the_error_file(
    client: openai.AsyncOpenAI, mock_upstream: MockUpstream
) -> None:
    mock_upstream.config.per_model["bad"] = Behaviour(status=400)
    lines = [chat_line("ok1"), chat_line("no1", model="bad"), chat_line("ok2")]
    file_id = await upload(client, jsonl(lines))
    batch = await client.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    done = await wait_status(client, batch.id, {"completed"})
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (2, 1)
    assert done.output_file_id is not None and done.error_file_id is not None
    errors = await content_lines(client, done.error_file_id)
    assert [e["custom_id"] for e in errors] == ["no1"]
    response = errors[0]["response"]
    assert isinstance(response, dict) and response["status_code"] == 400
    assert errors[0]["error"] is None


async def test_cancel_mid_batch_keeps_partial_results(
    client: openai.AsyncOpenAI, mock_upstream: MockUpstream
) -> None:
    mock_upstream.config.per_model["slow"] = Behaviour(hold=True)
    lines = [chat_line(f"fast{i}") for i in range(5)]
    lines += [chat_line(f"slow{i}", model="slow") for i in range(5)]
    file_id = await upload(client, jsonl(lines))
    batch = await client.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )

    def five_done_and_slow_sent(current: openai.types.Batch) -> bool:
        assert current.request_counts is not None
        return current.request_counts.completed == 5 and bool(mock_upstream.stats.by_model["slow"])

    await poll_until(lambda: client.batches.retrieve(batch.id), five_done_and_slow_sent)
    cancelling = await client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled")
    done = await wait_status(client, batch.id, {"cancelled"})
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (5, 5)
    assert done.output_file_id is not None and done.error_file_id is not None
    outputs = await content_lines(client, done.output_file_id)
    assert sorted(o["custom_id"] for o in outputs) == [f"fast{i}" for i in range(5)]
    errors = await content_lines(client, done.error_file_id)
    assert sorted(e["custom_id"] for e in errors) == [f"slow{i}" for i in range(5)]
    assert all(isinstance(e["error"], dict) for e in errors)
    assert {e["error"]["code"] for e in errors} == {"batch_cancelled"}  # type: ignore[index]
    mock_upstream.release_held()

    # Cancelling a cancelled batch returns it unchanged.
    again = await client.batches.cancel(batch.id)
    assert again.status == "cancelled"


async def test_list_pagination_returns_every_batch_once(client: openai.AsyncOpenAI) -> None:
    file_id = await upload(client, jsonl([chat_line("a")]))
    created = []
    for _ in range(7):
        b = await client.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        created.append(b.id)
    first = await client.batches.list(limit=3)
    assert [b.id for b in first.data] == created[::-1][:3]
    assert first.has_more
    seen = [b.id async for b in await client.batches.list(limit=3)]
    assert seen == created[::-1]


async def test_retry_reruns_only_failed_requests(
    client: openai.AsyncOpenAI, mock_upstream: MockUpstream, server: Running
) -> None:
    mock_upstream.config.per_model["flaky"] = Behaviour(status=400)
    lines = [chat_line("good"), chat_line("flaky", model="flaky")]
    file_id = await upload(client, jsonl(lines))
    batch = await client.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    done = await wait_status(client, batch.id, {"completed"})
    assert done.request_counts is not None and done.request_counts.failed == 1
    sent_before = mock_upstream.stats.total

    del mock_upstream.config.per_model["flaky"]
    retried = await client.post(f"/batches/{batch.id}/retry", cast_to=openai.types.Batch)
    assert retried.status in ("in_progress", "finalizing", "completed")
    done = await wait_status(client, batch.id, {"completed"})
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (2, 0)
    assert mock_upstream.stats.total == sent_before + 1
    assert mock_upstream.stats.by_model["flaky"] == 2
    outputs = await content_lines(client, str(done.output_file_id))
    assert sorted(o["custom_id"] for o in outputs) == ["flaky", "good"]
