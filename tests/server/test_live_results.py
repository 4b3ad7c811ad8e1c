"""Reading a running batch's output as it is recorded, over real HTTP (docs/api.md,
"Following a batch's results"): GET /v1/batches/{id}/results with a cursor, a follower
that disconnects in the middle of a wait and resumes, and the finished file unchanged."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest
import trio
from helpers import is_setting, poll_until
from serverkit import chat_line, fusillade, jsonl, wait_status

from fusillade.mock_upstream import Behaviour, MockUpstream
from fusillade.server.serve import Running


async def _running_batch(client: openai.AsyncOpenAI, mock_upstream: MockUpstream) -> str:
    """5 requests that complete now and 5 held at the upstream until ``release_held``."""
    mock_upstream.config.per_model["slow"] = Behaviour(hold=True)
    lines = [chat_line(f"fast{i}") for i in range(5)]
    lines += [chat_line(f"slow{i}", model="slow") for i in range(5)]
    stored = await client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
    batch = await client.batches.create(
        input_file_id=stored.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    await poll_until(lambda: mock_upstream.stats.by_model.get("slow", 0) == 5)
    return batch.id


def _ids(body: bytes) -> list[str]:
    return [json.loads(line)["custom_id"] for line in body.splitlines()]


async def test_a_follower_reads_a_running_batch_then_resumes_after_a_disconnect(
    client: openai.AsyncOpenAI, http: httpx.AsyncClient, mock_upstream: MockUpstream
) -> None:
    batch_id = await _running_batch(client, mock_upstream)
    route = f"/v1/batches/{batch_id}/results"
    kept: list[bytes] = []  # the lines of every answer received whole
    cursor: str | None = None

    async def read(**params: object) -> httpx.Response:
        nonlocal cursor
        query = {**params, **({"after": cursor} if cursor else {})}
        r = await http.get(route, params=query)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("application/jsonl")
        kept.extend(r.content.splitlines(keepends=True))
        cursor = r.headers.get("X-Fusillade-Cursor", cursor)
        return r

    # two lines at a time while the batch runs: the five fast ones, the slow ones held
    first = await read(limit=2)
    assert first.headers["X-Incomplete"] == "true"
    assert first.headers["X-Fusillade-Batch-Status"] == "in_progress"
    await poll_until(lambda: read(limit=2), lambda _: len(kept) == 5)
    nothing = await read(limit=2)
    assert nothing.content == b""
    assert nothing.headers["X-Incomplete"] == "true"
    assert nothing.headers["X-Fusillade-Cursor"] == cursor

    # the output file's content while running: the lines so far, marked incomplete
    batch = await client.batches.retrieve(batch_id)
    assert batch.output_file_id is not None
    partial = await http.get(f"/v1/files/{batch.output_file_id}/content")
    assert partial.headers["X-Incomplete"] == "true"
    assert sorted(_ids(partial.content)) == [f"fast{i}" for i in range(5)]

    # a long wait abandoned: the client goes away while the server waits for a line
    with trio.move_on_after(0.5) as gone:
        await http.get(route, params={"after": cursor, "wait": 30})
    assert gone.cancelled_caught

    mock_upstream.release_held()
    while True:  # resume after the last cursor kept, waiting for lines as they come
        r = await read(wait=10)
        if r.headers["X-Incomplete"] == "false":
            break
    assert r.headers["X-Fusillade-Batch-Status"] == "completed"
    ids = _ids(b"".join(kept))
    assert len(ids) == len(set(ids)) == 10

    # the finished file has the same lines (its order is completion order)
    done = await wait_status(client, batch_id, {"completed"})
    assert done.output_file_id == batch.output_file_id
    whole = await http.get(f"/v1/files/{batch.output_file_id}/content")
    assert "X-Incomplete" not in whole.headers
    assert sorted(whole.content.splitlines(keepends=True)) == sorted(kept)
    again = await http.get(route)
    assert again.headers["X-Incomplete"] == "false"
    assert sorted(again.content.splitlines(keepends=True)) == sorted(kept)


async def test_a_malformed_cursor_is_a_400(
    client: openai.AsyncOpenAI, http: httpx.AsyncClient, mock_upstream: MockUpstream
) -> None:
    stored = await client.files.create(file=("in.jsonl", jsonl([chat_line("a")])), purpose="batch")
    batch = await client.batches.create(
        input_file_id=stored.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    r = await http.get(f"/v1/batches/{batch.id}/results", params={"after": "nope"})
    assert r.status_code == 400
    missing = await http.get("/v1/batches/batch_" + "0" * 32 + "/results")
    assert missing.status_code == 404


async def _spawn_follow(
    nursery: trio.Nursery, batch_id: str, output: Path, target: list[str]
) -> trio.Process:
    base = {k: v for k, v in os.environ.items() if not is_setting(k)}
    command = [sys.executable, "-m", "fusillade", "results", batch_id, "--follow"]
    process: trio.Process = await nursery.start(
        functools.partial(
            trio.run_process,
            [*command, "-o", str(output), *target],
            check=False,
            env=base,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    )
    return process


@pytest.mark.parametrize("where", ["http", "db"])
async def test_results_follow_killed_and_restarted_writes_each_line_once(
    where: str,
    client: openai.AsyncOpenAI,
    server: Running,
    database_url: str,
    mock_upstream: MockUpstream,
    tmp_path: Path,
) -> None:
    assert server.url is not None
    target = ["--server", server.url] if where == "http" else ["--database-url", database_url]
    batch_id = await _running_batch(client, mock_upstream)
    output = tmp_path / "out.jsonl"
    async with trio.open_nursery() as nursery:
        first = await _spawn_follow(nursery, batch_id, output, target)

        def five_lines() -> bool:
            return output.exists() and len(output.read_bytes().splitlines()) == 5

        await poll_until(lambda: five_lines() and (tmp_path / "out.jsonl.cursor").exists())
        first.kill()  # no clean exit: as a crash
    assert first.returncode != 0
    # a crash between the write of a line and the cursor's: the line was written partly
    with output.open("ab") as f:
        f.write(b'{"id": "batch_req_partial' + b"x" * 100_000)  # longer than what is left
    mock_upstream.release_held()
    code, _, err = await fusillade("results", batch_id, "--follow", "-o", str(output), *target)
    assert code == 0, err
    assert "completed" in err
    ids = _ids(output.read_bytes())
    assert len(ids) == len(set(ids)) == 10
    assert (tmp_path / "out.errors.jsonl").read_bytes() == b""
    # run again: nothing new, the file as it was
    before = output.read_bytes()
    code, _, err = await fusillade("results", batch_id, "--follow", "-o", str(output), *target)
    assert code == 0, err
    assert output.read_bytes() == before


async def test_results_follow_refuses_a_file_it_cannot_resume(
    client: openai.AsyncOpenAI, server: Running, mock_upstream: MockUpstream, tmp_path: Path
) -> None:
    assert server.url is not None
    batch_id = await _running_batch(client, mock_upstream)
    output = tmp_path / "out.jsonl"
    output.write_bytes(b"something\n")
    code, _, err = await fusillade(
        "results", batch_id, "--follow", "-o", str(output), "--server", server.url
    )
    assert code == 1
    assert "out.jsonl.cursor" in err and "Traceback" not in err
    mock_upstream.release_held()
