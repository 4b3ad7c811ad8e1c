"""``--workers N``: ``run`` and ``serve`` with daemons in worker processes
(``fusillade.server.workers``): the deployment's limits, one clean shutdown, no orphans,
one set of metrics."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio
from helpers import chat_body, is_setting

from fusillade.mock_upstream import Behaviour, MockUpstream
from fusillade.runtime.config import DaemonConfig
from fusillade.server.workers import DEFAULT_MAX_WORKERS, share_of, worker_count

pytestmark = pytest.mark.slow


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not is_setting(k)}
    return {**env, "OPENAI_API_KEY": "sk-test", **extra}


def write_input(path: Path, n: int) -> Path:
    with path.open("w") as f:
        for i in range(n):
            line = {"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions"}
            f.write(json.dumps({**line, "body": json.loads(chat_body(i))}) + "\n")
    return path


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux: any of its threads may have started
    them)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def workers_of(pid: int) -> list[int]:
    out = []
    for child in children(pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"fusillade.server.workers" in cmdline:
            out.append(child)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_share_of_splits_each_limit_so_the_parts_sum_to_it() -> None:
    config = DaemonConfig(default_concurrency=5, model_concurrency={"a": 1, "b": 4})
    parts = [share_of(config, i, 3) for i in range(3)]
    assert [p.default_concurrency for p in parts] == [2, 2, 1]
    assert [p.model_concurrency["a"] for p in parts] == [1, 0, 0]
    assert [p.model_concurrency["b"] for p in parts] == [2, 1, 1]
    assert share_of(config, 0, 1) is config


def test_the_default_is_one_daemon_per_core_up_to_the_ceiling() -> None:
    cores = len(os.sched_getaffinity(0))
    assert worker_count(None) == min(cores, DEFAULT_MAX_WORKERS)
    assert worker_count(3) == 3


async def test_run_with_two_workers_sends_each_request_once_within_the_concurrency(
    database_url: str, mock_upstream: MockUpstream, tmp_path: Path
) -> None:
    mock_upstream.config.default = Behaviour(latency=0.05)
    src = write_input(tmp_path / "in.jsonl", 200)
    out = tmp_path / "out.jsonl"
    args = [
        sys.executable, "-m", "fusillade", "run", str(src), "-o", str(out),
        "--database-url", database_url, "--upstream", mock_upstream.url,
        "--concurrency", "3", "--workers", "2", "--progress-interval", "0.2",
    ]  # fmt: skip
    done = await trio.run_process(args, check=False, capture_stderr=True, env=clean_env())
    stderr = done.stderr.decode()
    assert done.returncode == 0, stderr
    ids = sorted(json.loads(line)["custom_id"] for line in out.read_text().splitlines())
    assert ids == sorted(f"c{i}" for i in range(200))
    stats = mock_upstream.stats
    assert sorted(stats.by_request_id.values()) == [1] * 200  # each sent once
    assert stats.peak_in_flight_total <= 3
    # the line counts the requests in flight of both daemons: at most the concurrency
    counts = [int(n) for n in re.findall(r"in flight (\d+)", stderr)]
    assert counts, stderr
    assert max(counts) <= 3
    # two daemons: the parent's and the worker's
    assert await trio.to_thread.run_sync(daemons_registered, database_url) == 2


def daemons_registered(database_url: str) -> int:
    import psycopg

    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT count(DISTINCT id) FROM daemons").fetchone()
    assert row is not None
    return int(row[0])


async def test_run_with_two_workers_ctrl_c_pauses_and_the_same_command_resumes(
    database_url: str, mock_upstream: MockUpstream, nursery: trio.Nursery, tmp_path: Path
) -> None:
    mock_upstream.config.default = Behaviour(hold=True)
    src = write_input(tmp_path / "in.jsonl", 6)
    out = tmp_path / "out.jsonl"
    args = [
        sys.executable, "-m", "fusillade", "run", str(src), "-o", str(out),
        "--database-url", database_url, "--upstream", mock_upstream.url,
        "--workers", "2", "--progress-interval", "0.2",
    ]  # fmt: skip
    env = clean_env(FUSILLADE_DAEMON_SHUTDOWN_GRACE="0.2s")
    log = tmp_path / "first.log"
    with log.open("wb") as stderr:
        first: trio.Process = await nursery.start(
            partial(trio.run_process, args, check=False, stderr=stderr, env=env)
        )
        with trio.fail_after(30):
            await mock_upstream.wait_until(lambda s: s.in_flight_total >= 6)
        workers = workers_of(first.pid)
        assert len(workers) == 1
        first.send_signal(signal.SIGINT)
        for worker in workers:  # a terminal sends Ctrl-C to the whole group
            os.kill(worker, signal.SIGINT)
        with trio.fail_after(30):
            status = await first.wait()
    text = log.read_text()
    assert status == 130, text
    assert "Traceback" not in text
    assert text.splitlines()[-1].startswith("paused with 0 of 6 requests done"), text
    assert not any(alive(w) for w in workers)
    mock_upstream.config.default = Behaviour()
    mock_upstream.release_held()
    done = await trio.run_process(args, check=False, capture_stderr=True, env=env)
    assert done.returncode == 0, done.stderr.decode()
    ids = sorted(json.loads(line)["custom_id"] for line in out.read_text().splitlines())
    assert ids == sorted(f"c{i}" for i in range(6))


async def test_sigkill_of_the_parent_leaves_no_worker_running(
    database_url: str, mock_upstream: MockUpstream, nursery: trio.Nursery, tmp_path: Path
) -> None:
    mock_upstream.config.default = Behaviour(hold=True)
    src = write_input(tmp_path / "in.jsonl", 4)
    args = [
        sys.executable, "-m", "fusillade", "run", str(src), "-o", str(tmp_path / "o.jsonl"),
        "--database-url", database_url, "--upstream", mock_upstream.url, "--workers", "3",
    ]  # fmt: skip
    env = clean_env(FUSILLADE_DAEMON_SHUTDOWN_GRACE="0.2s")
    parent: trio.Process = await nursery.start(
        partial(trio.run_process, args, check=False, stderr=subprocess.DEVNULL, env=env)
    )
    with trio.fail_after(30):
        while len(workers := workers_of(parent.pid)) < 2:
            await trio.sleep(0.05)  # polling the process table
        await mock_upstream.wait_until(lambda s: s.in_flight_total >= 4)
    parent.send_signal(signal.SIGKILL)
    await parent.wait()
    with trio.fail_after(30):
        while any(alive(w) for w in workers):
            await trio.sleep(0.05)  # polling the process table


async def test_serve_with_two_workers_sums_the_metrics_of_both(
    database_url: str, mock_upstream: MockUpstream, tmp_path: Path
) -> None:
    port = free_port()
    command = [
        sys.executable, "-m", "fusillade", "serve", "--database-url", database_url,
        "--port", str(port), "--upstream", mock_upstream.url, "--no-migrate",
        "--workers", "2", "--concurrency", "2",
    ]  # fmt: skip
    mock_upstream.config.default = Behaviour(latency=0.05)
    process = await trio.lowlevel.open_process(command, stderr=subprocess.PIPE, env=clean_env())
    assert process.stderr is not None
    output = b""
    src = write_input(tmp_path / "in.jsonl", 40)
    try:
        with trio.fail_after(60):
            while b"API listening on" not in output:
                chunk = await process.stderr.receive_some()
                assert chunk, output.decode()
                output += chunk
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
                up = await c.post(
                    "/v1/files",
                    files={"file": ("in.jsonl", src.read_bytes())},
                    data={"purpose": "batch"},
                )
                assert up.status_code == 200, up.text
                made = await c.post(
                    "/v1/batches",
                    json={
                        "input_file_id": up.json()["id"],
                        "endpoint": "/v1/chat/completions",
                        "completion_window": "24h",
                    },
                )
                assert made.status_code == 200, made.text
                while (await c.get(f"/v1/batches/{made.json()['id']}")).json()[
                    "status"
                ] != "completed":
                    await trio.sleep(0.1)  # polling the API
                text = (await c.get("/metrics")).text
            workers = workers_of(process.pid)
            process.send_signal(signal.SIGTERM)
            while chunk := await process.stderr.receive_some():
                output += chunk
            status = await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert status == 0, output.decode()
    assert len(workers) == 1
    assert not any(alive(w) for w in workers)  # stopped with serve, not after it
    completed = sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("fusillade_requests_completed_total{")
    )
    assert completed == 40, text
    assert mock_upstream.stats.peak_in_flight_total <= 2


async def test_run_with_two_workers_second_ctrl_c_stops_at_once(
    database_url: str, mock_upstream: MockUpstream, nursery: trio.Nursery, tmp_path: Path
) -> None:
    # a grace far longer than the test waits: only an immediate stop ends it in time
    mock_upstream.config.default = Behaviour(hold=True)
    src = write_input(tmp_path / "in.jsonl", 6)
    args = [
        sys.executable, "-m", "fusillade", "run", str(src), "-o", str(tmp_path / "o.jsonl"),
        "--database-url", database_url, "--upstream", mock_upstream.url, "--workers", "2",
    ]  # fmt: skip
    env = clean_env(FUSILLADE_DAEMON_SHUTDOWN_GRACE="120s")
    log = tmp_path / "run.log"
    with log.open("wb") as stderr:
        run: trio.Process = await nursery.start(
            partial(trio.run_process, args, check=False, stderr=stderr, env=env)
        )
        with trio.fail_after(30):
            await mock_upstream.wait_until(lambda s: s.in_flight_total >= 6)
            workers = workers_of(run.pid)
            run.send_signal(signal.SIGINT)
            while "pausing" not in log.read_text():
                await trio.sleep(0.05)  # polling the log
            run.send_signal(signal.SIGINT)
            status = await run.wait()
            while any(alive(w) for w in workers):
                await trio.sleep(0.05)  # polling the process table
    text = log.read_text()
    assert status == 130, text
    assert "Traceback" not in text
    assert workers
