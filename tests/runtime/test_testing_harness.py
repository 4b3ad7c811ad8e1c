"""``fusillade.testing``: the example of docs/testing-your-code.md runs as written, and
``open_in_memory`` routes every request to its mock upstream."""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import trio

import fusillade
from fusillade.testing import Behaviour, MockConfig, open_in_memory

DOC = Path(__file__).resolve().parent.parent.parent / "docs" / "testing-your-code.md"


def python_blocks(text: str) -> list[str]:
    """The fenced ```python blocks of a markdown text."""
    blocks: list[str] = []
    current: list[str] | None = None
    for line in text.splitlines():
        if current is None and line.strip() == "```python":
            current = []
        elif current is not None and line.strip() == "```":
            blocks.append("\n".join(current) + "\n")
            current = None
        elif current is not None:
            current.append(line)
    return blocks


def example() -> dict[str, Any]:
    """The names the page's example defines (its first python block, executed)."""
    namespace: dict[str, Any] = {"__name__": "testing_your_code_example"}
    exec(compile(python_blocks(DOC.read_text(encoding="utf-8"))[0], str(DOC), "exec"), namespace)
    return namespace


EXAMPLE = example()
EXAMPLE_TESTS = sorted(name for name in EXAMPLE if name.startswith("test_"))


def test_the_example_has_tests() -> None:
    assert len(EXAMPLE_TESTS) == 3


@pytest.mark.parametrize("name", EXAMPLE_TESTS)
async def test_the_example_passes(name: str) -> None:
    test: Callable[[], Coroutine[Any, Any, None]] = EXAMPLE[name]
    with trio.fail_after(30):
        await test()


def chat(custom_id: str, model: str, **fields: str) -> fusillade.RequestTemplate:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": custom_id}]})
    return fusillade.RequestTemplate(custom_id=custom_id, model=model, body=body, **fields)


async def test_every_model_goes_to_the_mock_upstream_whatever_the_config_routes() -> None:
    config = fusillade.DaemonConfig(
        upstreams={"real": fusillade.Upstream("http://127.0.0.1:9")},
        model_upstreams={"a": "real"},
        default_upstream="real",
        poll_interval=0.05,
        model_concurrency={"b": 1},
    )
    mock = MockConfig(per_model={"b": Behaviour(latency=0.01)})
    with trio.fail_after(30):
        async with open_in_memory(mock, config) as harness:
            engine = harness.engine
            file = await engine.create_file(
                [chat("1", "a"), *(chat(f"b{i}", "b") for i in range(4))]
            )
            batch = await engine.create_batch(file.id)
            done = await engine.wait(batch.record.id, interval=0.05)
            stats = harness.upstream.stats
            assert done.status is fusillade.BatchStatus.COMPLETED
            assert (stats.by_model["a"], stats.by_model["b"]) == (1, 4)
            assert stats.peak_in_flight["b"] == 1  # the given config's concurrency holds
            assert harness.upstream.config is mock  # live: a test may change it


async def test_a_template_endpoint_still_wins() -> None:
    """A template naming its own base URL is not rerouted (routing's first rule)."""
    with trio.fail_after(30):
        async with open_in_memory() as harness:
            engine = harness.engine
            away = chat("away", "m", endpoint="http://127.0.0.1:9")
            file = await engine.create_file([chat("here", "m"), away])
            batch = await engine.create_batch(file.id)
            done = await engine.wait(batch.record.id, interval=0.05)
            failed = [
                line.custom_id async for line in engine.iter_results(batch.record.id, errors=True)
            ]
    assert (done.counts.completed, failed) == (1, ["away"])
    assert harness.upstream.stats.total == 1
