"""``Engine.follow``: a running batch's output lines as they are recorded, resumed after
a cursor, each line once, ending when the batch is terminal (PostgreSQL and memory)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio
from helpers import poll_until

import fusillade
from fusillade.mock_upstream import Behaviour, MockUpstream
from fusillade.testing import MemoryRepository


def write_jsonl(path: Path, models: list[str]) -> Path:
    with path.open("w") as f:
        for i, model in enumerate(models):
            body = {"model": model, "messages": [{"role": "user", "content": f"hello {i}"}]}
            line = {"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions"}
            f.write(json.dumps({**line, "body": body}) + "\n")
    return path


@pytest.mark.parametrize("store", ["postgres", "memory"])
async def test_follow_stops_resumes_and_ends_with_the_batch(
    store: str, database_url: str, mock_upstream: MockUpstream, tmp_path: Path
) -> None:
    mock_upstream.config.per_model["slow"] = Behaviour(hold=True)
    cfg = fusillade.DaemonConfig(
        upstreams={"mock": fusillade.Upstream(mock_upstream.url, slow_start=False)},
        default_upstream="mock",
        poll_interval=0.05,
    )
    where = (
        {"repository": MemoryRepository()} if store == "memory" else {"database_url": database_url}
    )
    async with fusillade.open(config=cfg, **where) as engine:  # type: ignore[arg-type]
        stored = await engine.create_file(
            write_jsonl(tmp_path / "in.jsonl", ["m"] * 6 + ["slow"] * 4)
        )
        batch = (await engine.create_batch(stored.id)).record.id
        got: list[fusillade.LiveLine] = []
        async for live in engine.follow(batch, interval=0.02):
            got.append(live)
            if len(got) == 3:
                break  # the follower goes away
        assert str(fusillade.ResultCursor.parse(str(got[-1].cursor))) == str(got[-1].cursor)
        await poll_until(lambda: mock_upstream.stats.by_model.get("slow", 0) == 4)
        with trio.move_on_after(0.3) as idle:  # nothing more comes while the slow ones hang
            async for live in engine.follow(batch, after=str(got[-1].cursor), interval=0.02):
                got.append(live)
        assert idle.cancelled_caught
        assert len(got) == 6
        mock_upstream.release_held()
        with trio.fail_after(30):
            async for live in engine.follow(batch, after=got[-1].cursor, interval=0.02):
                got.append(live)
        view = await engine.get_batch(batch)
        assert view.status is fusillade.BatchStatus.COMPLETED
    ids = [x.line.custom_id for x in got]
    assert sorted(ids) == sorted(f"c{i}" for i in range(10))


async def test_a_malformed_cursor_is_a_validation_error() -> None:
    async with fusillade.open(repository=MemoryRepository(), run_daemon=False) as engine:
        with pytest.raises(fusillade.ValidationError):
            await engine.read_live("batch_" + "0" * 32, after="12.nothex")
