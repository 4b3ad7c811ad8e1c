"""``python -m fusillade serve`` as a process: starts, answers, stops on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import httpx
import trio
from helpers import is_setting

from fusillade.mock_upstream import MockUpstream


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_serve_runs_and_stops_gracefully_on_sigterm(
    database_url: str, mock_upstream: MockUpstream
) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not is_setting(k)}
    env["OPENAI_API_KEY"] = "sk-test"
    command = [
        sys.executable, "-m", "fusillade", "serve", "--database-url", database_url,
        "--port", str(port), "--upstream", mock_upstream.url, "--no-migrate",
    ]  # fmt: skip
    process = await trio.lowlevel.open_process(command, stderr=subprocess.PIPE, env=env)
    assert process.stderr is not None
    output = b""
    try:
        with trio.fail_after(60):
            while b"API listening on" not in output:
                chunk = await process.stderr.receive_some()
                assert chunk, output.decode()
                output += chunk
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
                ready = await c.get("/readyz")
                assert ready.status_code == 200, ready.text
                assert ready.json()["daemon"] is True
            process.send_signal(signal.SIGTERM)
            while chunk := await process.stderr.receive_some():
                output += chunk
            status = await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    text = output.decode()
    assert status == 0, text
    assert "SIGTERM: shutting down gracefully" in text
    assert "Traceback" not in text


async def test_serve_refuses_a_public_host_without_keys(database_url: str) -> None:
    command = [
        sys.executable, "-m", "fusillade", "serve", "--database-url", database_url,
        "--host", "0.0.0.0", "--no-migrate",
    ]  # fmt: skip
    result = await trio.run_process(command, capture_stderr=True, check=False)
    assert result.returncode == 1
    assert result.stderr.decode().strip() == (
        "fusillade serve: error: refusing to listen on 0.0.0.0: no api keys are configured "
        "([server] api_keys), so the API would be open to anyone; configure keys or listen "
        "on 127.0.0.1"
    )
