"""The upstream the throughput scenarios send to: nginx when it is on PATH, else mock-upstream.

nginx (Debian: ``apt-get install nginx-light``, and ``libnginx-mod-http-echo`` for the
500 ms latency of P3) runs one worker with a generated configuration in a temporary
directory and answers every request with a canned OpenAI chat completion. Three ports:

- ``fast``: ``return 200 '<completion>'`` at once;
- ``slow``: the same after ``echo_sleep`` (P3's latency), when the echo module exists;
- ``held``: answers after an hour (``echo_sleep 3600``): requests stay in flight (P6).

Without nginx, or for a latency the echo module cannot give, ``python -m fusillade
mock-upstream`` serves instead (``--latency``, ``--hold``); every row says which was used.
The harness installs nothing itself.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from benchmarks.common import (
    CANNED_COMPLETION,
    REPO_ROOT,
    ChildFailed,
    free_port,
    request_body,
    stop_and_reap,
    wait_for_port,
)

ECHO_MODULE_PATHS = (
    Path("/usr/lib/nginx/modules/ngx_http_echo_module.so"),
    Path("/usr/share/nginx/modules/ngx_http_echo_module.so"),
)

NGINX_CONF = """\
{load_module}
worker_processes 1;
daemon off;
master_process on;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
{user}
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 600s;
    client_max_body_size 16m;
    default_type application/json;
    server {{
        listen 127.0.0.1:{fast_port};
        location / {{ return 200 '{body}'; }}
    }}
{echo_servers}
}}
"""

ECHO_SERVER = """\
    server {{
        listen 127.0.0.1:{port};
        location / {{ echo_sleep {seconds}; echo '{body}'; }}
    }}
"""


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )


def echo_module() -> Path | None:
    return next((p for p in ECHO_MODULE_PATHS if p.exists()), None)


def nginx_version(binary: str) -> str:
    out = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False)
    return (out.stderr or out.stdout).strip().removeprefix("nginx version: ").removeprefix("nginx/")


@dataclass
class Upstreams:
    """Base URLs (no ``/v1``) of the running upstreams, and how each is served."""

    kind: str  # "nginx 1.22.1" or "mock-upstream"
    fast: str
    slow: dict[float, str] = field(default_factory=dict)  # latency -> url
    held: str | None = None
    notes: dict[str, str] = field(default_factory=dict)  # url -> what serves it
    pids: dict[str, int] = field(default_factory=dict)  # url -> its process (ours only)
    _procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _tmp: tempfile.TemporaryDirectory[str] | None = None

    def describe(self, url: str) -> str:
        return self.notes.get(url, self.kind)

    def slow_url(self, latency: float) -> str:
        """An upstream answering after ``latency`` s (a mock-upstream is started if needed)."""
        if latency not in self.slow:
            url = self._start_mock(["--latency", str(latency)])
            self.slow[latency] = url
            self.notes[url] = f"mock-upstream --latency {latency} ({self._why_mock()})"
        return self.slow[latency]

    def delayed_url(self, latency: float) -> str:
        """An upstream answering after ``latency`` s that holds thousands of requests
        cheaply (P12): nginx's ``echo_sleep`` when nginx serves that latency, else
        ``benchmarks.sleep_upstream`` (mock-upstream costs too much CPU per request)."""
        url = self.slow.get(latency)
        if url is not None and self.notes.get(url, "").startswith("nginx"):
            return url
        key = f"sleep:{latency}"
        if key not in self.notes:
            port = free_port()
            proc = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.sleep_upstream", str(port), str(latency)],
                cwd=REPO_ROOT,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            self._procs.append(proc)
            try:
                wait_for_port(port, 30, proc)
            except BaseException:
                stop_and_reap(proc)
                raise
            url = f"http://127.0.0.1:{port}"
            self.notes[key] = url
            self.notes[url] = (
                f"benchmarks.sleep_upstream {latency} (asyncio, 1 process; {self._why_mock()})"
            )
            self.pids[url] = proc.pid
        return self.notes[key]

    def held_url(self) -> str:
        if self.held is None:
            self.held = self._start_mock(["--hold"])
            self.notes[self.held] = f"mock-upstream --hold ({self._why_mock()})"
        return self.held

    def _why_mock(self) -> str:
        return "no nginx echo module" if self.kind.startswith("nginx") else "no nginx"

    def _start_mock(self, flags: list[str]) -> str:
        proc, url = spawn_mock(flags)
        self._procs.append(proc)
        self.pids[url] = proc.pid
        return url

    def stop(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self._procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs.clear()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def _start_nginx(binary: str, latencies: list[float]) -> Upstreams:
    tmp = tempfile.TemporaryDirectory(prefix="fusillade-bench-nginx-")
    module = echo_module()
    fast_port = free_port()
    echo_ports: dict[float, int] = {}
    servers = ""
    if module is not None:
        for seconds in [*latencies, 3600.0]:
            echo_ports[seconds] = port = free_port()
            servers += ECHO_SERVER.format(port=port, seconds=seconds, body=CANNED_COMPLETION)
    conf = NGINX_CONF.format(
        load_module=f"load_module {module};" if module else "",
        tmp=tmp.name,
        user="user root;" if os.geteuid() == 0 else "",
        fast_port=fast_port,
        body=CANNED_COMPLETION,
        echo_servers=servers,
    )
    conf_path = Path(tmp.name) / "nginx.conf"
    conf_path.write_text(conf)
    proc = subprocess.Popen(
        [binary, "-p", tmp.name, "-c", str(conf_path), "-e", f"{tmp.name}/error.log"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    kind = f"nginx {nginx_version(binary)} (1 worker)"
    up = Upstreams(kind=kind, fast=f"http://127.0.0.1:{fast_port}", _procs=[proc], _tmp=tmp)
    up.pids[up.fast] = proc.pid  # the master: its worker is its child (P1c's upstream CPU)
    try:
        wait_for_port(fast_port, 15, proc)
    except ChildFailed:
        err = proc.stderr.read().decode() if proc.stderr else ""
        up.stop()
        raise ChildFailed(f"nginx did not start: {err.strip()}") from None
    for seconds, port in echo_ports.items():
        url = f"http://127.0.0.1:{port}"
        if seconds == 3600.0:
            up.held = url
            up.notes[url] = f"{kind}, echo_sleep 3600"
        else:
            up.slow[seconds] = url
            up.notes[url] = f"{kind}, echo_sleep {seconds}"
            up.pids[url] = proc.pid
    return up


def _start_mock_only(reason: str) -> Upstreams:
    up = Upstreams(kind=f"mock-upstream ({reason})", fast="")
    up.fast = up._start_mock([])
    return up


@contextlib.contextmanager
def upstreams(latencies: list[float], *, prefer_nginx: bool = True) -> Iterator[Upstreams]:
    """Start the upstreams (nginx if available), check they answer, stop them at the end."""
    binary = nginx_binary() if prefer_nginx else None
    if binary:
        up = _start_nginx(binary, latencies)
    else:
        up = _start_mock_only("nginx not found on PATH" if prefer_nginx else "--no-nginx")
    try:
        _check(up.fast)
        yield up
    finally:
        up.stop()


def _check(base_url: str) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            r = httpx.post(
                base_url + "/v1/chat/completions", content=request_body(0).encode(), timeout=5
            )
            if r.status_code == 200 and r.json().get("object") == "chat.completion":
                return
            raise ChildFailed(f"upstream {base_url} answered {r.status_code}: {r.text[:200]}")
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def spawn_mock(flags: list[str]) -> tuple[subprocess.Popen[bytes], str]:
    """``fusillade mock-upstream FLAGS`` on a free port, once it listens: (process, base URL)."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "fusillade", "mock-upstream", "--port", str(port), *flags],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, 30, proc)
    except BaseException:
        stop_and_reap(proc)
        raise
    return proc, f"http://127.0.0.1:{port}"
