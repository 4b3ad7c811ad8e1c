"""``fusillade.open`` embedded in an application, under trio and under asyncio."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
import trio

import fusillade
from fusillade.mock_upstream import MockUpstream


def write_jsonl(path: Path, n: int) -> Path:
    with path.open("w") as f:
        for i in range(n):
            body = {"model": "m", "messages": [{"role": "user", "content": f"hello {i}"}]}
            line = {"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions"}
            f.write(json.dumps({**line, "body": body}) + "\n")
    return path


def config(url: str) -> fusillade.DaemonConfig:
    return fusillade.DaemonConfig(
        upstreams={"mock": fusillade.Upstream(url)}, default_upstream="mock", poll_interval=0.2
    )


async def scenario(database_url: str, upstream_url: str, jsonl: Path) -> list[str]:
    async with fusillade.open(database_url, config(upstream_url)) as engine:
        stored = await engine.create_file(jsonl)
        batch = await engine.create_batch(stored.id)
        done = await engine.wait(batch.record.id, interval=0.05)
        assert done.status is fusillade.BatchStatus.COMPLETED
        return [line.custom_id async for line in engine.iter_results(batch.record.id)]


async def test_under_trio(database_url: str, mock_upstream: MockUpstream, tmp_path: Path) -> None:
    got = await scenario(database_url, mock_upstream.url, write_jsonl(tmp_path / "in.jsonl", 50))
    assert sorted(got) == sorted(f"c{i}" for i in range(50))


async def test_invalid_file_stores_nothing(database_url: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"custom_id": "a", "method": "POST"}\nnot json\n')
    async with fusillade.open(database_url, run_daemon=False) as engine:
        with pytest.raises(fusillade.InvalidJSONL) as caught:
            await engine.create_file(bad)
        assert {p.line for p in caught.value.problems} == {1, 2}
        page = await trio.to_thread.run_sync(lambda: engine.repo.list_files(engine.owner))
        assert page.items == ()


@pytest.fixture
def upstream_process() -> Iterator[str]:
    """The mock upstream in its own process (it runs on trio; the test loop is asyncio)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "fusillade", "mock-upstream", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        yield first.split()[-1]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_under_asyncio(database_url: str, upstream_process: str, tmp_path: Path) -> None:
    jsonl = write_jsonl(tmp_path / "in.jsonl", 30)

    async def main() -> list[str]:
        assert asyncio.get_running_loop() is not None
        return await scenario(database_url, upstream_process, jsonl)

    got = anyio.run(main, backend="asyncio")
    assert sorted(got) == sorted(f"c{i}" for i in range(30))


async def test_without_a_database(mock_upstream: MockUpstream, tmp_path: Path) -> None:
    """The in-memory repository runs the same engine, for tests and experiments."""
    from fusillade.store.memory import MemoryRepository

    jsonl = write_jsonl(tmp_path / "in.jsonl", 20)
    cfg = config(mock_upstream.url)
    async with fusillade.open(repository=MemoryRepository(), config=cfg) as engine:
        stored = await engine.create_file(jsonl)
        batch = await engine.create_batch(stored.id)
        done = await engine.wait(batch.record.id, interval=0.05)
        assert done.status is fusillade.BatchStatus.COMPLETED
        assert done.counts.completed == 20
