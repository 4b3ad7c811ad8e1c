"""``python -m fusillade serve`` as a measured child process (P4, P5 and P8 over HTTP).

The server is measured only when ``fusillade.server`` exists and ``serve --help`` works;
otherwise the HTTP variants are rows saying "not measured: server not available". Its
peak RSS is read from the kernel when it is reaped after SIGTERM.
"""

from __future__ import annotations

import contextlib
import importlib.util
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx

from benchmarks.common import (
    REPO_ROOT,
    ChildFailed,
    child_environment,
    free_port,
    kill_and_reap,
    stop_and_reap,
)

NOT_AVAILABLE = "not measured: server not available"


def server_available() -> tuple[bool, str]:
    """Whether the HTTP server can be measured, and why not when it cannot."""
    if importlib.util.find_spec("fusillade.server") is None:
        return False, NOT_AVAILABLE + " (no fusillade.server)"
    done = subprocess.run(
        [sys.executable, "-m", "fusillade", "serve", "--help"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        return False, NOT_AVAILABLE + " (`fusillade serve --help` failed)"
    return True, ""


@dataclass
class Server:
    url: str
    proc: subprocess.Popen[str]
    peak_rss_mib: float = 0.0


def _environment(extra: dict[str, str]) -> dict[str, str]:
    env = child_environment()
    env.update(extra)
    env.setdefault("FUSILLADE_LOG_LEVEL", "WARNING")
    return env


@contextlib.contextmanager
def running_server(
    database_url: str,
    *,
    upstream: str | None = None,
    concurrency: int = 256,
    env: dict[str, str] | None = None,
) -> Iterator[Server]:
    """A server on a free loopback port; with ``upstream``, its daemon too (else API only)."""
    port = free_port()
    cmd = [
        sys.executable, "-m", "fusillade", "serve",
        "--database-url", database_url, "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    if upstream is None:
        cmd.append("--no-daemon")
    else:
        cmd += ["--upstream", upstream, "--concurrency", str(concurrency)]
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            cmd,
            cwd=REPO_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=err,
            text=True,
            env=_environment(env or {}),
        )
        server = Server(f"http://127.0.0.1:{port}", proc)
        try:
            _wait_healthy(server, err)
            yield server
        except BaseException:
            kill_and_reap(proc)
            raise
        server.peak_rss_mib = stop_and_reap(proc)


def _wait_healthy(server: Server, err: object) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            break
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(server.url + "/healthz", timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    tail = ""
    if hasattr(err, "seek") and hasattr(err, "read"):
        err.seek(0)
        tail = "\n".join(err.read().strip().splitlines()[-10:])
    raise ChildFailed(f"fusillade serve did not become healthy:\n{tail}")
