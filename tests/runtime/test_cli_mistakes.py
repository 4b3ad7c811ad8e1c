"""Ordinary mistakes at the command line end in one line naming what to change and a
documented exit status, never a traceback (issue 14, items 1 and 2).

Each test drives the real ``python -m fusillade`` in a subprocess and checks its stderr
and exit status, and that nothing was stored when the command refused to start.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import psycopg
import pytest
import trio
from helpers import chat_body, is_setting
from scripted_upstream import ScriptedUpstream, serve_scripted_upstream

from fusillade.mock_upstream import Behaviour, MockUpstream

pytestmark = pytest.mark.slow

NO_TRACEBACK = "Traceback"


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without fusillade settings or an upstream key."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not is_setting(k) and k not in ("OPENAI_API_KEY", "DATABASE_URL")
    }
    return {**env, **extra}


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "fusillade", *args]


async def fusillade(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    done: subprocess.CompletedProcess[bytes] = await trio.run_process(
        command(*args),
        check=False,
        capture_stdout=True,
        capture_stderr=True,
        stdin=subprocess.DEVNULL,
        env=env if env is not None else clean_env(),
    )
    return done


def write_input(path: Path, n: int, urls: Sequence[str] = ()) -> Path:
    with path.open("w") as f:
        for i in range(n):
            url = urls[i] if i < len(urls) else "/v1/chat/completions"
            line = {"custom_id": f"c{i}", "method": "POST", "url": url}
            f.write(json.dumps({**line, "body": json.loads(chat_body(i))}) + "\n")
    return path


def stored(database_url: str) -> tuple[int, int]:
    """Files and batches in the database."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM files), (SELECT count(*) FROM batches)"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def refused_start(done: subprocess.CompletedProcess[bytes], tmp_path: Path) -> str:
    """The stderr of a run that must have stopped before storing anything."""
    stderr = done.stderr.decode()
    assert done.returncode == 2, stderr
    assert NO_TRACEBACK not in stderr
    assert not list(tmp_path.glob("*.fusillade-run.json")), "a state file was left"
    return stderr


# --- item 1: run checks before it stores anything ---------------------------------------


async def test_run_without_upstream_says_to_pass_one(database_url: str, tmp_path: Path) -> None:
    src = write_input(tmp_path / "in.jsonl", 3)
    done = await fusillade(
        "run", str(src), "-o", str(tmp_path / "out.jsonl"), "--database-url", database_url
    )
    stderr = refused_start(done, tmp_path)
    assert stderr.startswith("fusillade run: error: no upstream for model 'm': pass --upstream URL")
    assert len(stderr.splitlines()) == 1
    assert stored(database_url) == (0, 0)


async def test_run_with_the_upstream_down_names_host_and_port(
    database_url: str, tmp_path: Path
) -> None:
    port = free_port()
    src = write_input(tmp_path / "in.jsonl", 3)
    args = ["run", str(src), "-o", str(tmp_path / "out.jsonl"), "--database-url", database_url]
    done = await fusillade(*args, "--upstream", f"http://127.0.0.1:{port}", env=clean_env(
        OPENAI_API_KEY="sk-test"
    ))  # fmt: skip
    stderr = refused_start(done, tmp_path)
    assert stderr == (
        f"fusillade run: error: upstream 127.0.0.1:{port} is unreachable (connection "
        "refused): is the server running, and is --upstream right? (--no-preflight skips "
        "this check)\n"
    )
    assert stored(database_url) == (0, 0)


async def test_run_upstream_without_scheme_is_refused_naming_the_flag(
    database_url: str, tmp_path: Path
) -> None:
    src = write_input(tmp_path / "in.jsonl", 1)
    done = await fusillade(
        "run", str(src), "-o", str(tmp_path / "out.jsonl"), "--database-url", database_url,
        "--upstream", "127.0.0.1:18001",
    )  # fmt: skip
    stderr = refused_start(done, tmp_path)
    assert stderr == (
        "fusillade run: error: command line: --upstream: must be an http:// or https:// URL, "
        "got '127.0.0.1:18001'; give the scheme such as http://127.0.0.1:18001\n"
    )
    assert stored(database_url) == (0, 0)


async def test_run_warns_of_an_unset_key_and_stops_when_the_upstream_refuses(
    database_url: str, tmp_path: Path, nursery: trio.Nursery
) -> None:
    refusing: ScriptedUpstream = await nursery.start(serve_scripted_upstream, {})
    refusing.default = (401, b'{"error": {"message": "Incorrect API key provided"}}')
    src = write_input(tmp_path / "in.jsonl", 2)
    args = ["run", str(src), "-o", str(tmp_path / "out.jsonl"), "--database-url", database_url]
    where = refusing.url.removeprefix("http://")
    done = await fusillade(*args, "--upstream", refusing.url)
    stderr = refused_start(done, tmp_path)
    assert stderr.splitlines() == [
        f"fusillade run: warning: $OPENAI_API_KEY is unset: requests to {where} go without "
        "an api key (set it, or name another variable with --api-key-env)",
        f"fusillade run: error: upstream {where} refused the api key (401): no key was sent: "
        "$OPENAI_API_KEY is unset (--no-preflight skips this check)",
    ]
    assert stored(database_url) == (0, 0)
    # a key that is set but refused: told so, without the warning
    done = await fusillade(*args, "--upstream", refusing.url, env=clean_env(OPENAI_API_KEY="sk-x"))
    stderr = refused_start(done, tmp_path)
    assert "refused the api key (401): set $OPENAI_API_KEY to a key it accepts" in stderr
    assert "warning" not in stderr
    # --no-preflight goes ahead (and the requests fail with the upstream's 401)
    skip = ("--no-preflight", "--max-attempts", "1")
    done = await fusillade(*args, "--upstream", refusing.url, *skip)
    assert done.returncode == 1, done.stderr.decode()
    assert stored(database_url)[1] == 1  # one batch (its input, output and error files)


async def test_run_preflight_passes_against_the_mock_upstream(
    database_url: str, mock_upstream: MockUpstream, tmp_path: Path
) -> None:
    src = write_input(tmp_path / "in.jsonl", 2)
    done = await fusillade(
        "run", str(src), "-o", str(tmp_path / "out.jsonl"), "--database-url", database_url,
        "--upstream", mock_upstream.url + "/v1", env=clean_env(OPENAI_API_KEY="sk-test"),
    )  # fmt: skip
    stderr = done.stderr.decode()
    assert done.returncode == 0, stderr
    assert "fusillade run:" not in stderr  # no warning, no error
    assert mock_upstream.stats.total == 2  # the preflight is not an API request


# --- item 2: one line and a documented status per mistake -------------------------------


async def test_run_line_with_another_url_names_the_line(database_url: str, tmp_path: Path) -> None:
    src = write_input(tmp_path / "in.jsonl", 3, ["/v1/chat/completions", "/v1/embeddings"])
    done = await fusillade(
        "run", str(src), "-o", str(tmp_path / "out.jsonl"), "--database-url", database_url,
        "--upstream", "http://127.0.0.1:9",
    )  # fmt: skip
    stderr = refused_start(done, tmp_path)
    assert stderr == (
        "fusillade run: error: line 2: url '/v1/embeddings' is not the batch endpoint "
        "'/v1/chat/completions' (the url of line 1); every line of a batch has the same url: "
        "run the '/v1/embeddings' lines as a batch of their own\n"
    )
    assert stored(database_url) == (0, 0)


async def test_run_output_into_a_missing_directory(database_url: str, tmp_path: Path) -> None:
    src = write_input(tmp_path / "in.jsonl", 1)
    out = tmp_path / "missing" / "out.jsonl"
    done = await fusillade(
        "run", str(src), "-o", str(out), "--database-url", database_url,
        "--upstream", "http://127.0.0.1:9",
    )  # fmt: skip
    stderr = refused_start(done, tmp_path)
    assert stderr == (
        f"fusillade run: error: -o {out}: the directory {out.parent} does not exist: "
        "create it, or write somewhere else\n"
    )
    assert stored(database_url) == (0, 0)


async def test_run_ctrl_c_pauses_cleanly_and_the_same_command_resumes(
    database_url: str, mock_upstream: MockUpstream, nursery: trio.Nursery, tmp_path: Path
) -> None:
    mock_upstream.config.default = Behaviour(hold=True)
    src = write_input(tmp_path / "in.jsonl", 6)
    out = tmp_path / "out.jsonl"
    args = command(
        "run", str(src), "-o", str(out), "--database-url", database_url,
        "--upstream", mock_upstream.url, "--progress-interval", "0.2",
    )  # fmt: skip
    env = clean_env(OPENAI_API_KEY="sk-test", FUSILLADE_DAEMON_SHUTDOWN_GRACE="0.2s")
    log = tmp_path / "first.log"
    with log.open("wb") as stderr:
        first: trio.Process = await nursery.start(
            partial(trio.run_process, args, check=False, stderr=stderr, env=env)
        )
        with trio.fail_after(30):
            await mock_upstream.wait_until(lambda s: s.in_flight_total >= 1)
        first.send_signal(signal.SIGINT)
        with trio.fail_after(30):
            status = await first.wait()
    text = log.read_text()
    assert status == 130, text
    assert NO_TRACEBACK not in text and "KeyboardInterrupt" not in text
    assert "pausing: letting requests in flight finish (Ctrl-C again to stop now)" in text
    assert text.splitlines()[-1] == (
        "paused with 0 of 6 requests done: run the same command again to resume "
        f"(its state: {out}.fusillade-run.json)"
    )
    assert not out.exists()
    mock_upstream.config.default = Behaviour()
    mock_upstream.release_held()
    done = await trio.run_process(args, check=False, capture_stderr=True, env=env)
    stderr = done.stderr.decode()
    assert done.returncode == 0, stderr
    assert "resuming batch" in stderr
    ids = sorted(json.loads(line)["custom_id"] for line in out.read_text().splitlines())
    assert ids == sorted(f"c{i}" for i in range(6))


async def test_status_with_the_server_down_names_the_url(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    done = await fusillade("status", "batch_0123456789abcdef", "--server", url)
    stderr = done.stderr.decode()
    assert done.returncode == 1, stderr
    assert stderr == (
        f"fusillade status: error: no answer from the server at {url} ([Errno 111] "
        "Connection refused): is `fusillade serve` running there? check --server\n"
    )
    assert done.stdout == b""


async def _read_until(proc: trio.Process, seen: bytes, done: Callable[[bytes], bool]) -> bytes:
    """``seen`` plus what ``proc`` writes on stderr until ``done`` holds of it (the caller
    bounds the time); an early end of stderr fails with what came."""
    assert proc.stderr is not None
    while not done(seen):
        chunk = await proc.stderr.receive_some(4096)
        assert chunk, seen.decode()
        seen += chunk
    return seen


async def _interrupt(proc: trio.Process, seen: bytes) -> tuple[bytes, int]:
    """Ctrl-C ``proc``, then read its stderr to the end: everything seen, and its status."""
    assert proc.stderr is not None
    proc.send_signal(signal.SIGINT)
    with trio.fail_after(30):
        while chunk := await proc.stderr.receive_some(4096):
            seen += chunk
        return seen, await proc.wait()


async def test_submit_wait_without_a_daemon_says_so_and_ctrl_c_ends_it(
    database_url: str, tmp_path: Path
) -> None:
    src = write_input(tmp_path / "in.jsonl", 2)
    args = command("submit", str(src), "--wait", "--database-url", database_url)
    proc = await trio.lowlevel.open_process(
        args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=clean_env()
    )
    seen = b""
    try:
        with trio.fail_after(30):
            # the whole warning line
            seen = await _read_until(proc, seen, lambda s: b"(Ctrl-C to stop)\n" in s)
        seen, status = await _interrupt(proc, seen)
    finally:
        proc.kill()
    text = seen.decode()
    assert NO_DAEMON in text
    assert text.count("warning: no daemon") == 1, text  # once
    assert status == 130, text
    assert text.endswith("fusillade submit: interrupted\n")
    assert NO_TRACEBACK not in text


NO_DAEMON = (
    "warning: no daemon is running against this database, so nothing will work on this "
    "batch: start one with `fusillade serve` (or `fusillade serve --no-api`) on the same "
    "database, or use `fusillade run FILE -o OUT`; still waiting (Ctrl-C to stop)\n"
)


async def test_watch_without_a_daemon_says_so_once_and_keeps_waiting(
    database_url: str, tmp_path: Path
) -> None:
    src = write_input(tmp_path / "in.jsonl", 2)
    submitted = await fusillade("submit", str(src), "--database-url", database_url)
    assert submitted.returncode == 0, submitted.stderr.decode()
    batch_id = json.loads(submitted.stdout)["id"]
    args = command(
        "watch", batch_id, "--interval", "0.2", "--progress-interval", "0.2",
        "--database-url", database_url,
    )  # fmt: skip
    proc = await trio.lowlevel.open_process(
        args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=clean_env()
    )
    seen = b""
    try:
        with trio.fail_after(30):
            seen = await _read_until(proc, seen, lambda s: b"(Ctrl-C to stop)\n" in s)
            # still watching: more progress lines come after the warning
            seen = await _read_until(
                proc, seen, lambda s: s.split(b"(Ctrl-C to stop)\n")[1].count(b"in_progress") >= 2
            )
        seen, status = await _interrupt(proc, seen)
    finally:
        proc.kill()
    text = seen.decode()
    assert NO_DAEMON in text
    assert text.count("warning: no daemon") == 1, text
    assert status == 130, text
    assert NO_TRACEBACK not in text


async def test_status_into_a_closed_pipe_is_quiet(database_url: str, tmp_path: Path) -> None:
    src = write_input(tmp_path / "in.jsonl", 1)
    submitted = await fusillade("submit", str(src), "--database-url", database_url)
    assert submitted.returncode == 0, submitted.stderr.decode()
    batch_id = json.loads(submitted.stdout)["id"]
    read, write = os.pipe()
    os.close(read)  # the reader is gone before anything is written: `status ID | head`
    try:
        done = await trio.run_process(
            command("status", batch_id, "--database-url", database_url),
            check=False,
            stdout=write,
            capture_stderr=True,
            env=clean_env(),
        )
    finally:
        os.close(write)
    assert done.returncode == 0
    assert done.stderr == b""


# --- reruns: --retry-failed with changed routing, --fresh -------------------------------


async def test_run_retry_failed_reruns_the_failures_with_the_new_upstream(
    database_url: str, mock_upstream: MockUpstream, nursery: trio.Nursery, tmp_path: Path
) -> None:
    wrong: ScriptedUpstream = await nursery.start(serve_scripted_upstream, {})
    wrong.default = (400, b'{"error": {"message": "no such model"}}')
    src = write_input(tmp_path / "in.jsonl", 3)
    out = tmp_path / "out.jsonl"
    env = clean_env(OPENAI_API_KEY="sk-test")
    args = ["run", str(src), "-o", str(out), "--database-url", database_url]
    first = await fusillade(*args, "--upstream", wrong.url, env=env)
    assert first.returncode == 1, first.stderr.decode()
    assert len((tmp_path / "out.errors.jsonl").read_text().splitlines()) == 3
    # the same command again: the finished batch is not replayed silently
    same = await fusillade(*args, "--upstream", mock_upstream.url, env=env)
    assert same.returncode == 1
    assert (
        "this batch already finished with 3 requests failed or cancelled: --retry-failed "
        "runs them again, --fresh starts a new batch\n"
    ) in same.stderr.decode()
    assert mock_upstream.stats.total == 0
    # --retry-failed: the failures run again, routed by this run's --upstream
    again = await fusillade(*args, "--upstream", mock_upstream.url, "--retry-failed", env=env)
    stderr = again.stderr.decode()
    assert again.returncode == 0, stderr
    assert "retrying 3 failed or cancelled requests" in stderr
    assert mock_upstream.stats.total == 3
    ids = sorted(json.loads(line)["custom_id"] for line in out.read_text().splitlines())
    assert ids == ["c0", "c1", "c2"]
    assert (tmp_path / "out.errors.jsonl").read_text() == ""
    assert stored(database_url)[1] == 1


async def test_run_fresh_starts_a_new_batch(
    database_url: str, mock_upstream: MockUpstream, tmp_path: Path
) -> None:
    src = write_input(tmp_path / "in.jsonl", 2)
    args = ["run", str(src), "-o", str(tmp_path / "out.jsonl"), "--database-url", database_url]
    args += ["--upstream", mock_upstream.url]
    env = clean_env(OPENAI_API_KEY="sk-test")
    assert (await fusillade(*args, env=env)).returncode == 0
    resumed = await fusillade(*args, env=env)
    assert resumed.returncode == 0 and "resuming batch" in resumed.stderr.decode()
    assert mock_upstream.stats.total == 2
    fresh = await fusillade(*args, "--fresh", env=env)
    assert fresh.returncode == 0, fresh.stderr.decode()
    assert "started batch" in fresh.stderr.decode()
    assert mock_upstream.stats.total == 4
    assert stored(database_url)[1] == 2


async def test_an_os_error_inside_a_command_is_one_line(database_url: str, tmp_path: Path) -> None:
    # the safety net of main(): results into a directory that does not exist
    src = write_input(tmp_path / "in.jsonl", 1)
    submitted = await fusillade("submit", str(src), "--database-url", database_url)
    batch_id = json.loads(submitted.stdout)["id"]
    out = tmp_path / "missing" / "out.jsonl"
    done = await fusillade("results", batch_id, "-o", str(out), "--database-url", database_url)
    stderr = done.stderr.decode()
    assert done.returncode == 1, stderr
    assert stderr == f"fusillade results: error: {out}.tmp: No such file or directory\n"
