"""Daemons in real processes: SIGKILL mid-batch, replicas, and the ``run`` command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from datetime import timedelta
from functools import partial
from pathlib import Path

import psycopg
import pytest
import trio
from helpers import chat_body, make_batch, result_lines, wait_status

from fusillade.core.models import BatchStatus
from fusillade.mock_upstream import Behaviour, MockUpstream
from fusillade.store.postgres import PostgresRepository

TESTS = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def body(i: int) -> object:
    return json.loads(chat_body(i))


async def start_daemon(
    nursery: trio.Nursery, database_url: str, upstream: str, concurrency: int, stale: float
) -> trio.Process:
    args = [sys.executable, str(TESTS / "daemon_process.py"), database_url, upstream]
    proc: trio.Process = await nursery.start(
        partial(
            trio.run_process,
            [*args, str(concurrency), str(stale)],
            stdout=subprocess.PIPE,
            check=False,
        )
    )
    assert proc.stdout is not None
    with trio.fail_after(30):
        seen = b""
        while b"ready" not in seen:
            seen += await proc.stdout.receive_some(100)
    return proc


async def until_seen(server: MockUpstream, n: int) -> None:
    with trio.fail_after(30):
        await server.wait_until(lambda s: s.total >= n)


async def test_sigkill_mid_batch_three_times_loses_nothing(
    repo: PostgresRepository, database_url: str, mock_upstream: MockUpstream, nursery: trio.Nursery
) -> None:
    mock_upstream.config.default = Behaviour(latency=0.05)
    n, concurrency = 600, 10
    batch = await make_batch(repo, n)
    in_flight_at_kills = 0
    for kill in range(3):
        proc = await start_daemon(nursery, database_url, mock_upstream.url, concurrency, 1.0)
        await until_seen(mock_upstream, (kill + 1) * 120)
        in_flight_at_kills += mock_upstream.stats.in_flight_total
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    last = await start_daemon(nursery, database_url, mock_upstream.url, concurrency, 1.0)
    view = await wait_status(repo, batch, timeout=60)
    assert view.status is BatchStatus.COMPLETED
    assert view.counts.completed == n
    lines = await result_lines(repo, batch)
    assert sorted(line.custom_id for line in lines) == sorted(f"c{i}" for i in range(n))
    seen = mock_upstream.stats.by_request_id
    assert len(seen) == n and min(seen.values()) >= 1
    # at most once, plus what was in flight (sent, not yet recorded) at each kill
    assert sum(seen.values()) - n <= in_flight_at_kills + 3 * concurrency
    last.send_signal(signal.SIGTERM)
    await last.wait()


async def test_two_replicas_share_a_batch_within_their_limits(
    repo: PostgresRepository, database_url: str, mock_upstream: MockUpstream, nursery: trio.Nursery
) -> None:
    mock_upstream.config.default = Behaviour(latency=0.02)
    batch = await make_batch(repo, 400)
    procs = [await start_daemon(nursery, database_url, mock_upstream.url, 4, 5.0) for _ in "ab"]
    view = await wait_status(repo, batch, timeout=60)
    assert view.counts.completed == 400
    assert max(mock_upstream.stats.by_request_id.values()) == 1  # nothing sent twice
    assert mock_upstream.stats.peak_in_flight["m"] <= 2 * 4
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        assert await proc.wait() == 0


def held_rows(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM requests WHERE state IN ('claimed', 'processing')"
        ).fetchone()
    assert row is not None
    return int(row[0])


def run_command(args: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "fusillade", "run", *args]


def write_input(path: Path, n: int) -> Path:
    with path.open("w") as f:
        for i in range(n):
            line = {"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions"}
            f.write(json.dumps({**line, "body": body(i)}) + "\n")
    return path


async def test_run_killed_and_rerun_resumes(
    database_url: str, mock_upstream: MockUpstream, nursery: trio.Nursery, tmp_path: Path
) -> None:
    mock_upstream.config.default = Behaviour(latency=0.05)
    src = write_input(tmp_path / "in.jsonl", 300)
    out = tmp_path / "out.jsonl"
    args = [
        str(src), "-o", str(out), "--upstream", mock_upstream.url, "--database-url",
        database_url, "--concurrency", "8", "--stale-after", "1", "--progress-interval", "0.2",
    ]  # fmt: skip
    first: trio.Process = await nursery.start(
        partial(trio.run_process, run_command(args), check=False, stderr=subprocess.DEVNULL)
    )
    await until_seen(mock_upstream, 60)
    first.send_signal(signal.SIGKILL)
    await first.wait()
    assert not out.exists()
    # What the killed run held: sent but not recorded (in flight, or answered and waiting
    # in its result buffer). Only these may be sent again.
    held = await trio.to_thread.run_sync(held_rows, database_url)
    done = await trio.run_process(run_command(args), check=False, capture_stderr=True)
    stderr = done.stderr.decode()
    assert done.returncode == 0, stderr
    assert "resuming batch" in stderr
    assert "completed   300/300" in stderr  # the plain (not a terminal) progress form
    ids = [json.loads(line)["custom_id"] for line in out.read_text().splitlines()]
    assert sorted(ids) == sorted(f"c{i}" for i in range(300))
    assert (tmp_path / "out.errors.jsonl").read_text() == ""
    # finished requests were not sent again: only those held at the kill were
    assert sum(mock_upstream.stats.by_request_id.values()) <= 300 + held


async def test_run_bad_input_exits_2_with_the_line(database_url: str, tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    good = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": body(0)}
    src.write_text(json.dumps(good) + "\n" + json.dumps(good) + "\n{oops\n")
    done = await trio.run_process(
        run_command([str(src), "-o", str(tmp_path / "o.jsonl"), "--database-url", database_url]),
        check=False,
        capture_stderr=True,
        env={**os.environ},
    )
    stderr = done.stderr.decode()
    assert done.returncode == 2, stderr
    assert "line 2" in stderr and "duplicate" in stderr
    assert "line 3" in stderr


async def test_run_with_failures_exits_1(
    database_url: str, mock_upstream: MockUpstream, tmp_path: Path
) -> None:
    mock_upstream.config.default = Behaviour(status=400)
    src = write_input(tmp_path / "in.jsonl", 3)
    out = tmp_path / "out.jsonl"
    done = await trio.run_process(
        run_command(
            [
                str(src),
                "-o",
                str(out),
                "--upstream",
                mock_upstream.url,
                "--database-url",
                database_url,
            ]
        ),
        check=False,
        capture_stderr=True,
    )
    assert done.returncode == 1, done.stderr.decode()
    assert out.read_text() == ""
    errors = [json.loads(x) for x in (tmp_path / "out.errors.jsonl").read_text().splitlines()]
    assert {e["response"]["status_code"] for e in errors} == {400}


async def test_run_reads_the_configuration(
    database_url: str, mock_upstream: MockUpstream, tmp_path: Path
) -> None:
    # run takes the file, variables and flags serve takes: database, upstream, [daemon]
    mock_upstream.config.default = Behaviour(status=500)  # retryable: attempts are counted
    config = tmp_path / "fusillade.toml"
    config.write_text(
        f'database_url = "{database_url}"\ndefault_upstream = "mock"\n'
        f'[upstreams.mock]\nbase_url = "{mock_upstream.url}"\n'
        '[daemon]\nmax_attempts = 1\nbackoff_base = "10ms"\n'
    )
    src = write_input(tmp_path / "in.jsonl", 3)

    async def run(out: str, *flags: str) -> int:
        args = [str(src), "-o", str(tmp_path / out), *flags]
        env = {**os.environ, "FUSILLADE_CONFIG": str(config)}
        done = await trio.run_process(run_command(args), check=False, capture_stderr=True, env=env)
        return done.returncode

    assert await run("one.jsonl") == 1
    assert mock_upstream.stats.total == 3  # the file's max_attempts
    assert await run("two.jsonl", "--max-attempts", "2") == 1
    assert mock_upstream.stats.total == 3 + 6  # the flag wins


async def test_run_configuration_errors_exit_2_naming_the_key(tmp_path: Path) -> None:
    src = write_input(tmp_path / "in.jsonl", 1)
    args = [str(src), "-o", str(tmp_path / "o.jsonl"), "--concurrency", "0"]
    done = await trio.run_process(run_command(args), check=False, capture_stderr=True)
    assert done.returncode == 2
    assert done.stderr.decode() == (
        "fusillade run: error: command line: [daemon] default_concurrency: "
        "must be an integer >= 1, got 0\n"
    )


async def test_run_stores_its_completion_window_on_the_batch(
    database_url: str, mock_upstream: MockUpstream, tmp_path: Path
) -> None:
    src = write_input(tmp_path / "in.jsonl", 2)
    common = [str(src), "--upstream", mock_upstream.url, "--database-url", database_url]
    done = await trio.run_process(
        run_command([*common, "-o", str(tmp_path / "a.jsonl"), "--completion-window", "90m"]),
        check=False,
        capture_stderr=True,
    )
    assert done.returncode == 0, done.stderr.decode()
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT completion_window, expires_at - created_at FROM batches"
        ).fetchall()
    assert rows == [("90m", timedelta(minutes=90))]
    # refused before anything is stored, as [server] completion_windows items are
    for bad in ("soon", "0h", "1H", "366d"):
        refused = await trio.run_process(
            run_command([*common, "-o", str(tmp_path / "b.jsonl"), "--completion-window", bad]),
            check=False,
            capture_stderr=True,
        )
        assert refused.returncode == 2, (bad, refused.stderr.decode())
        assert "completion_window" in refused.stderr.decode(), bad
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM batches").fetchone() == (1,)


async def test_run_paces_to_rpm_and_says_it_is_throttled(
    database_url: str, mock_upstream: MockUpstream, tmp_path: Path
) -> None:
    # The upstream allows 30 requests a minute, enforced per second as OpenAI does; run
    # --rpm 30 paces its 4 requests about 2 s apart: no 429, and the progress line says
    # why it waits.
    mock_upstream.config.default = Behaviour(rpm=30)
    src = write_input(tmp_path / "in.jsonl", 4)
    out = tmp_path / "out.jsonl"
    args = [
        str(src), "-o", str(out), "--upstream", mock_upstream.url, "--database-url",
        database_url, "--rpm", "30", "--progress-interval", "0.2",
        # one daemon: several would each pace their part (15 rpm each) from the same
        # start, and their first requests may land in the same second of the upstream's
        # per-second enforcement (docs/deployment.md, "Workers")
        "--workers", "1",
    ]  # fmt: skip
    done = await trio.run_process(run_command(args), check=False, capture_stderr=True)
    stderr = done.stderr.decode()
    assert done.returncode == 0, stderr
    assert sum(mock_upstream.stats.rate_limited.values()) == 0
    assert mock_upstream.stats.total == 4
    assert "throttled: rpm" in stderr
