"""Where ``fusillade run`` writes its results (issue 14, item 4): ``-o -`` (standard
output, progress on stderr), ``--ordered`` (input order, not completion order), a closed
pipe, and the error line of an upstream that is down.

Each test drives the real ``python -m fusillade run`` in a subprocess against the mock
upstream. The early lines of the input go to a model the upstream answers slowly, so
completion order is not input order unless ``--ordered`` makes it so.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from helpers import is_setting

from fusillade.mock_upstream import Behaviour, MockUpstream

pytestmark = pytest.mark.slow

# line i's model: the first two are slow, two are refused (400), the rest fast
MODELS = ("slow", "slow", "bad", "fast", "bad", "fast", "fast")
IDS = [f"c{i}" for i in range(len(MODELS))]
FAILED = {"c2", "c4"}


def env() -> dict[str, str]:
    """The test's environment without fusillade settings, with an upstream key."""
    keep = {k: v for k, v in os.environ.items() if not is_setting(k)}
    return {**keep, "OPENAI_API_KEY": "sk-test"}


async def fusillade(*args: str, stdout: int | None = None) -> subprocess.CompletedProcess[bytes]:
    where: dict[str, object] = {"capture_stdout": True} if stdout is None else {"stdout": stdout}
    done: subprocess.CompletedProcess[bytes] = await trio.run_process(
        [sys.executable, "-m", "fusillade", *args],
        check=False,
        **where,
        capture_stderr=True,
        stdin=subprocess.DEVNULL,
        env=env(),
    )
    return done


def write_input(path: Path) -> Path:
    with path.open("w") as f:
        for custom_id, model in zip(IDS, MODELS, strict=True):
            body = {"model": model, "messages": [{"role": "user", "content": custom_id}]}
            line = {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions"}
            f.write(json.dumps({**line, "body": body}) + "\n")
    return path


def ids(text: str | bytes) -> list[str]:
    return [json.loads(line)["custom_id"] for line in text.splitlines()]


@pytest.fixture
def upstream(mock_upstream: MockUpstream) -> MockUpstream:
    mock_upstream.config.per_model = {
        "slow": Behaviour(latency=1.0),
        "bad": Behaviour(status=400),
    }
    return mock_upstream


def run_args(src: Path, out: str, database_url: str, upstream: MockUpstream) -> list[str]:
    return [
        "run", str(src), "-o", out, "--database-url", database_url,
        "--upstream", upstream.url, "--max-attempts", "1",
    ]  # fmt: skip


async def test_run_to_stdout_writes_every_result_there_and_resumes(
    database_url: str, upstream: MockUpstream, tmp_path: Path
) -> None:
    src = write_input(tmp_path / "in.jsonl")
    args = run_args(src, "-", database_url, upstream)
    done = await fusillade(*args)
    stderr = done.stderr.decode()
    assert done.returncode == 1, stderr  # two lines failed
    # every line is a result, errors included; completion order: the slow lines last
    got = ids(done.stdout)
    assert sorted(got) == sorted(IDS)
    assert got != IDS
    assert {json.loads(line)["custom_id"] for line in done.stdout.splitlines()
            if json.loads(line)["response"]["status_code"] == 400} == FAILED  # fmt: skip
    assert "results in standard output" in stderr and "Traceback" not in stderr
    # the state file is beside the input; nothing else was written
    state = tmp_path / "in.jsonl.stdout.fusillade-run.json"
    assert sorted(os.listdir(tmp_path)) == ["in.jsonl", state.name]
    # resumable: the same command writes the same results without sending anything again
    sent = upstream.stats.total
    again = await fusillade(*args)
    assert "resuming batch" in again.stderr.decode()
    assert sorted(ids(again.stdout)) == sorted(IDS)
    assert upstream.stats.total == sent
    # --retry-failed and --fresh find the batch through that state file
    retried = await fusillade(*args, "--retry-failed")
    assert "retrying 2 failed or cancelled requests" in retried.stderr.decode()
    assert upstream.stats.total == sent + 2
    fresh = await fusillade(*args, "--fresh")
    assert "started batch" in fresh.stderr.decode()
    assert upstream.stats.total == 2 * sent + 2


async def test_run_to_stdout_with_an_errors_file_keeps_stdout_for_successes_and_back(
    database_url: str, upstream: MockUpstream, tmp_path: Path
) -> None:
    src = write_input(tmp_path / "in.jsonl")
    errors = tmp_path / "failed.jsonl"
    done = await fusillade(*run_args(src, "-", database_url, upstream), "--errors", str(errors))
    assert done.returncode == 1, done.stderr.decode()
    assert sorted(ids(done.stdout)) == sorted(set(IDS) - FAILED)
    assert sorted(ids(errors.read_text())) == sorted(FAILED)
    assert f"results in standard output and {errors}" in done.stderr.decode()
    # the other way round: --errors - with an output file
    out = tmp_path / "out.jsonl"
    swapped = await fusillade(*run_args(src, str(out), database_url, upstream), "--errors", "-")
    assert swapped.returncode == 1, swapped.stderr.decode()
    assert sorted(ids(swapped.stdout)) == sorted(FAILED)
    assert sorted(ids(out.read_text())) == sorted(set(IDS) - FAILED)


async def test_run_ordered_writes_results_in_input_order(
    database_url: str, upstream: MockUpstream, tmp_path: Path
) -> None:
    src = write_input(tmp_path / "in.jsonl")
    # stdout: successes and errors interleaved, in the line order of the input
    done = await fusillade(*run_args(src, "-", database_url, upstream), "--ordered")
    assert done.returncode == 1, done.stderr.decode()
    assert ids(done.stdout) == IDS
    # separate files: each in input order (a new batch for this output: the premise that
    # completion order differs is checked on its unordered results first)
    out = tmp_path / "out.jsonl"
    first = await fusillade(*run_args(src, str(out), database_url, upstream))
    assert first.returncode == 1, first.stderr.decode()
    assert ids(out.read_text()) != [i for i in IDS if i not in FAILED]
    ordered = await fusillade(*run_args(src, str(out), database_url, upstream), "--ordered")
    assert ordered.returncode == 1, ordered.stderr.decode()
    assert "resuming batch" in ordered.stderr.decode()
    assert ids(out.read_text()) == [i for i in IDS if i not in FAILED]
    assert ids((tmp_path / "out.errors.jsonl").read_text()) == ["c2", "c4"]
    # --single-file: interleaved in input order
    single = await fusillade(
        *run_args(src, str(out), database_url, upstream), "--ordered", "--single-file"
    )
    assert single.returncode == 1, single.stderr.decode()
    assert ids(out.read_text()) == IDS


async def test_run_into_a_closed_pipe_ends_quietly(
    database_url: str, upstream: MockUpstream, tmp_path: Path
) -> None:
    src = write_input(tmp_path / "in.jsonl")
    read, write = os.pipe()
    os.close(read)  # the reader is gone before anything is written: `run -o - | head -1`
    try:
        done = await fusillade(*run_args(src, "-", database_url, upstream), stdout=write)
    finally:
        os.close(write)
    stderr = done.stderr.decode()
    assert done.returncode == 0, stderr
    # quiet: no traceback and no complaint about the pipe (the progress lines may still
    # name the upstream's errors, "last error: http 400")
    assert "Traceback" not in stderr, stderr
    assert "pipe" not in stderr.lower() and "Error" not in stderr, stderr


async def test_run_without_preflight_against_a_down_upstream_names_host_and_port(
    database_url: str, tmp_path: Path
) -> None:
    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    src = write_input(tmp_path / "in.jsonl")
    done = await fusillade(
        "run", str(src), "-o", "-", "--database-url", database_url, "--no-preflight",
        "--upstream", f"http://user:s3cret@127.0.0.1:{port}", "--max-attempts", "1",
    )  # fmt: skip
    assert done.returncode == 1, done.stderr.decode()
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert sorted(line["custom_id"] for line in lines) == sorted(IDS)
    for line in lines:
        assert line["error"]["message"] == f"connect: ConnectError (upstream 127.0.0.1:{port})"
    assert b"s3cret" not in done.stdout + done.stderr
