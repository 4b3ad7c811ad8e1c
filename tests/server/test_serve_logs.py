"""What ``serve`` logs, as a process: the batch lifecycle and upstream trouble, as JSON
lines with ``--log-format json`` (docs/logging.md)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import trio
from helpers import is_setting
from serverkit import chat_line, jsonl
from test_command import free_port

from fusillade.mock_upstream import Behaviour, MockUpstream


@contextmanager
def _show(lines: Lines) -> Iterator[None]:
    try:
        yield
    except trio.TooSlowError:
        raise AssertionError("not found in:\n" + lines.raw.decode()) from None


class Lines:
    """The JSON lines a process writes to stderr, read as they come."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream
        self.raw = b""
        self.lines: list[dict[str, Any]] = []

    async def until(self, found: Any, timeout: float = 60) -> dict[str, Any]:
        with _show(self), trio.fail_after(timeout):
            while True:
                for line in self.lines:
                    if found(line):
                        return line
                chunk = await self.stream.receive_some()
                assert chunk, self.raw.decode()
                self.raw += chunk
                self.parse()

    async def to_the_end(self) -> None:
        while chunk := await self.stream.receive_some():
            self.raw += chunk
        self.parse()

    def parse(self) -> None:
        complete = self.raw[: self.raw.rfind(b"\n") + 1]
        # every line is one JSON object
        self.lines = [json.loads(line) for line in complete.decode().splitlines()]


async def test_serve_logs_the_lifecycle_and_trouble_as_json_lines(
    database_url: str, mock_upstream: MockUpstream
) -> None:
    # each request refused once (429, no retry-after): a burst of 429s, then success
    mock_upstream.config.default = Behaviour(rate_limit_attempts=1)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not is_setting(k)}
    env["OPENAI_API_KEY"] = "sk-test-SECRET"
    env["FUSILLADE_DAEMON_BACKOFF_BASE"] = "10ms"
    env["FUSILLADE_DAEMON_BACKOFF_CAP"] = "20ms"
    # maintenance (which freezes the settled batches nobody read) every second
    env["FUSILLADE_DAEMON_STALE_AFTER"] = "2s"
    env["FUSILLADE_DAEMON_HEARTBEAT_INTERVAL"] = "500ms"
    command = [
        sys.executable, "-m", "fusillade", "serve", "--database-url", database_url,
        "--port", str(port), "--upstream", mock_upstream.url, "--no-migrate",
        "--log-format", "json",
    ]  # fmt: skip
    process = await trio.lowlevel.open_process(command, stderr=subprocess.PIPE, env=env)
    assert process.stderr is not None
    out = Lines(process.stderr)
    try:
        await out.until(lambda line: "API listening on" in line["msg"])
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}/v1") as api:
            body = jsonl(chat_line(f"c{i}") for i in range(8))
            file = await api.post(
                "/files", files={"file": ("in.jsonl", body)}, data={"purpose": "batch"}
            )
            assert file.status_code == 200, file.text
            batch = await api.post(
                "/batches",
                json={
                    "input_file_id": file.json()["id"],
                    "endpoint": "/v1/chat/completions",
                    "completion_window": "24h",
                },
            )
            assert batch.status_code == 200, batch.text
            batch_id = batch.json()["id"]
            # nobody asks for the batch: the daemon's maintenance finds it settled
            finished = await out.until(lambda line: line.get("event") == "batch_finished")
            # a second batch, cancelled while its requests are held
            mock_upstream.config.default = Behaviour(hold=True)
            second = await api.post(
                "/batches",
                json={
                    "input_file_id": file.json()["id"],
                    "endpoint": "/v1/chat/completions",
                    "completion_window": "24h",
                },
            )
            second_id = second.json()["id"]
            await mock_upstream.wait_until(lambda s: s.in_flight_total > 0)
            assert (await api.post(f"/batches/{second_id}/cancel")).status_code == 200
            mock_upstream.release_held()
            cancelled = await out.until(
                lambda line: line.get("event") == "batch_finished" and line["batch_id"] == second_id
            )
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            await out.to_the_end()
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

    lines = out.lines
    assert all({"ts", "level", "logger", "msg"} <= set(line) for line in lines)
    created = [line for line in lines if line.get("event") == "batch_created"]
    assert [c["batch_id"] for c in created] == [batch_id, second_id]
    assert created[0]["requests"] == 8 and created[0]["endpoint"] == "/v1/chat/completions"
    assert created[0]["logger"] == "fusillade.batches" and created[0]["level"] == "info"
    assert finished["batch_id"] == batch_id
    assert (finished["status"], finished["completed"], finished["failed"]) == ("completed", 8, 0)
    assert finished["msg"].startswith(f"batch {batch_id} completed: 8 completed, 0 failed")
    assert cancelled["status"] == "cancelled" and cancelled["cancelled"] > 0
    cancels = [line for line in lines if line.get("event") == "batch_cancel_requested"]
    assert [c["batch_id"] for c in cancels] == [second_id]
    # each transition once
    finishes = [line["batch_id"] for line in lines if line.get("event") == "batch_finished"]
    assert sorted(finishes) == sorted([batch_id, second_id])
    # the 429s came to a few lines, and never a key
    assert mock_upstream.stats.faults["rate_limit"] == 8
    trouble = [line for line in lines if line["logger"] == "fusillade.upstream"]
    assert 1 <= len(trouble) <= 3, trouble
    started = trouble[0]
    assert started["event"] == "upstream_trouble_started" and started["level"] == "warning"
    assert started["upstream"] == "default" and started["host"] == "127.0.0.1"
    assert started["counts"]["rate_limited"] >= 1
    assert "SECRET" not in out.raw.decode()
    assert any(line["msg"] == "SIGTERM: shutting down gracefully" for line in lines)
