"""What every scenario shares: sizes, canned bodies, result rows and child processes.

Anything whose memory is measured runs in a child process (``python -m benchmarks.child
NAME JSON``); its peak RSS comes from the kernel (``os.wait4``'s ``ru_maxrss`` for that
child once it has exited), never from the child's own bookkeeping.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL = "bench-model"
ENDPOINT = "/v1/chat/completions"
# The canned answer of the upstream: an OpenAI chat completion with usage. No quote,
# dollar or backslash in it: nginx's `return` and `echo` take it verbatim.
CANNED_COMPLETION = (
    '{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,'
    '"model":"bench-model","choices":[{"index":0,"message":{"role":"assistant",'
    '"content":"Hello! How can I help you today?"},"finish_reason":"stop"}],'
    '"usage":{"prompt_tokens":12,"completion_tokens":9,"total_tokens":21}}'
)
RESULT_PREFIX = "RESULT "
READY_LINE = "READY"


def request_body(i: int) -> str:
    """The JSON body of request ``i`` (what fusillade and the baselines send)."""
    return (
        '{"model":"bench-model","messages":[{"role":"user","content":"Say hello '
        f'(request {i})"}}],"max_tokens":16}}'
    )


def input_line(i: int) -> str:
    """Line ``i`` of an OpenAI batch JSONL file (no newline)."""
    return (
        f'{{"custom_id":"req-{i:08d}","method":"POST","url":"{ENDPOINT}","body":{request_body(i)}}}'
    )


def write_jsonl(path: Path, lines: int) -> Path:
    with path.open("w", encoding="utf-8") as f:
        for start in range(0, lines, 10_000):
            f.write("".join(input_line(i) + "\n" for i in range(start, min(lines, start + 10_000))))
    return path


@dataclass(frozen=True)
class Sizes:
    """How big each scenario is; ``FULL`` is the size the targets name (docs/performance.md),
    the others scale it down."""

    name: str
    p1_requests: int = 20_000
    p1_slots: int = 256
    p3_requests: int = 8_000
    p3_slots: int = 400
    p3_latency: float = 0.5
    p1_probe_requests: int = 5_000  # each bare-httpx layout of P1's probe (issue 16)
    p3_probe_requests: int = 2_000  # each layout of P3's probe: five rounds of 400
    ingest_lines: int = 1_000_000
    download_lines: int = 1_000_000
    p6_pending: int = 1_000_000
    p6_seconds: float = 30.0
    p7_rows: int = 20_000_000
    p8_trials: int = 10
    p8_idle: float = 1.0  # seconds the daemon idles before each P8 trial (plus 0-0.74)
    per_client: int = 4  # connections per shard, as DaemonConfig's default
    p9_requests: int = 3_000
    p9_slots: int = 256
    p9_rpm: int = 1_200  # the mock's limits; fusillade learns them from its headers
    p9_tpm: int = 200_000
    p10_big: int = 50_000  # owner A's batch
    p10_small: int = 100  # owner B's batch
    p10_slots: int = 32
    p10_latency: float = 0.2
    p11_long: int = 2_000  # the 24h batch
    p11_short: int = 200  # the 1h batch
    p11_slots: int = 16
    p11_latency: float = 0.05
    p12_requests: int = 40_000
    p12_slots: int = 4_000
    p12_latency: float = 2.0
    p13_cycles: int = 10
    p13_requests: int = 100_000  # finished requests per cycle
    p14_requests: int = 20_000  # PostgreSQL's work per recorded request
    p15_daemons: tuple[int, ...] = (1, 2, 4, 8)  # daemon processes on one database
    p15_requests: int = 20_000  # zero-latency upstream, p1_slots split among the daemons
    p15_slow_requests: int = 10_000  # the p12_latency upstream, p15_slow_slots split
    p15_slow_slots: int = 1_000
    informative: bool = True  # also the informative variants (P2 with pgqueuer's asyncpg)

    def scaled(self, factor: float) -> Sizes:
        def s(n: int, least: int) -> int:
            return max(least, round(n * factor))

        return replace(
            self,
            name=f"{self.name} x{factor:g}",
            p1_requests=s(self.p1_requests, 100),
            p1_probe_requests=s(self.p1_probe_requests, 100),
            p3_probe_requests=s(self.p3_probe_requests, self.p3_slots),
            p3_requests=s(self.p3_requests, self.p3_slots),
            ingest_lines=s(self.ingest_lines, 500),
            download_lines=s(self.download_lines, 500),
            p6_pending=s(self.p6_pending, 500),
            p6_seconds=max(1.5, self.p6_seconds * factor),
            p7_rows=s(self.p7_rows, 2_000),
            p8_trials=s(self.p8_trials, 1),
            p9_requests=s(self.p9_requests, 40),
            p10_big=s(self.p10_big, 10 * self.p10_small),
            p11_long=s(self.p11_long, 5 * self.p11_short),
            p12_requests=s(self.p12_requests, self.p12_slots),
            p13_requests=s(self.p13_requests, 500),
            p14_requests=s(self.p14_requests, 100),
            p15_requests=s(self.p15_requests, 100),
            p15_slow_requests=s(self.p15_slow_requests, self.p15_slow_slots),
        )


FULL = Sizes("full")
QUICK = replace(
    FULL,
    name="quick",
    p1_requests=1_000,
    p1_probe_requests=1_000,
    p3_requests=800,
    p3_probe_requests=800,
    ingest_lines=50_000,
    download_lines=20_000,
    p6_pending=50_000,
    p6_seconds=4.0,
    p7_rows=200_000,
    p8_trials=2,
    p9_requests=400,
    p10_big=5_000,
    p12_requests=8_000,
    p12_slots=2_000,
    p13_requests=10_000,
    p14_requests=2_000,
    p15_requests=2_000,
    p15_slow_requests=2_000,
    informative=False,
)
SMOKE = replace(
    FULL,
    name="smoke",
    p1_requests=32,
    p1_slots=32,
    p1_probe_requests=32,
    p3_requests=64,
    p3_slots=32,
    p3_probe_requests=32,
    ingest_lines=1_000,
    download_lines=1_000,
    p6_pending=1_000,
    p6_seconds=1.0,
    p7_rows=2_000,
    p8_trials=1,
    p8_idle=0.2,
    p9_requests=40,
    p9_rpm=6_000,
    p10_big=400,
    p10_small=20,
    p10_slots=8,
    p10_latency=0.05,
    p11_long=200,
    p11_short=20,
    p11_slots=8,
    p11_latency=0.02,
    p12_requests=200,
    p12_slots=100,
    p12_latency=0.2,
    p13_cycles=3,
    p13_requests=500,
    p14_requests=64,
    p15_daemons=(1, 2),
    p15_requests=64,
    p15_slow_requests=100,
    p15_slow_slots=50,
    informative=False,
)


@dataclass
class Row:
    """One line of the results table (and of the JSON output)."""

    id: str
    measure: str
    target: str
    result: str = "not measured"
    baseline: str = ""
    ratio: str = ""
    peak_rss: str = ""
    notes: list[str] = field(default_factory=list)
    met: bool | None = None  # None: no target to meet, or not measured
    raw: dict[str, Any] = field(default_factory=dict)


@dataclass
class Env:
    """What the scenarios run against (built once by ``run``)."""

    admin_url: str
    database_origin: str
    sizes: Sizes
    runs: int
    workdir: Path
    upstream_kind: str = ""
    server_available: bool = False
    server_note: str = ""
    results_dir: Path = REPO_ROOT / "benchmarks" / "results"
    log: Callable[[str], None] = print


@dataclass
class ChildResult:
    result: dict[str, Any]
    peak_rss_mib: float
    wall_seconds: float
    returncode: int
    stderr_tail: str
    cpu_seconds: float = 0.0  # user + system, its reaped children included (wait4)


class ChildFailed(RuntimeError):
    pass


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def fmt_rate(value: float, unit: str = "req/s") -> str:
    return f"{value:,.0f} {unit}"


def fmt_mib(value: float) -> str:
    return f"{value:,.0f} MiB"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen[Any] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ChildFailed(f"process exited with status {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise ChildFailed(f"nothing listening on port {port} after {timeout} s")


def vm_rss_mib(pid: int) -> float | None:
    """Current resident set of ``pid`` from /proc (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


# The harness's `--sender` reaches every child (library daemons and `run`/`serve`) through
# this variable; every other FUSILLADE_* setting of the caller's shell is dropped.
SENDER_VARIABLE = "FUSILLADE_DAEMON_SENDER"


def child_environment() -> dict[str, str]:
    """This environment without ``FUSILLADE_*`` (no configuration file, no workers set),
    but with the harness's ``--sender``."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("FUSILLADE_") or k == SENDER_VARIABLE
    }


def child_command(name: str, params: dict[str, Any]) -> list[str]:
    return [sys.executable, "-m", "benchmarks.child", name, json.dumps(params)]


@contextlib.contextmanager
def _output_files() -> Iterator[tuple[Any, Any]]:
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        yield out, err


@dataclass
class Finished:
    """A reaped process: its output, exit status, wall time and peak RSS (from wait4)."""

    stdout: str
    stderr: str
    returncode: int
    wall_seconds: float
    peak_rss_mib: float
    cpu_seconds: float = 0.0  # user + system of it and of the children it reaped (wait4)

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.stderr.strip().splitlines()[-lines:])


def run_process(
    cmd: list[str],
    *,
    timeout: float = 1800.0,
    env: dict[str, str] | None = None,
    on_ready: Callable[[int], None] | None = None,
    sample: Callable[[int], None] | None = None,
    sample_interval: float = 0.5,
    sample_at_once: bool = False,
    cwd: Path = REPO_ROOT,
) -> Finished:
    """Run ``cmd`` to its end; reap it with ``os.wait4`` to read its own ``ru_maxrss``.

    With ``on_ready`` or ``sample``: once the process prints ``READY``, ``on_ready(pid)``
    is called, then ``sample(pid)`` every ``sample_interval`` seconds until it exits
    (with ``sample_at_once``: from its start, without waiting for ``READY``).
    ``cwd``: where it runs (``python -m`` imports from there first: P9 runs an older
    checkout's ``benchmarks.child`` with its own fusillade).
    """
    with _output_files() as (out, err):
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=cwd, text=True, env=env)
        try:
            reaped = _watch(
                proc, out, timeout, on_ready, sample, sample_interval, ready=sample_at_once
            )
        except BaseException:
            kill_and_reap(proc)
            raise
        if reaped is None:
            kill_and_reap(proc)
            raise ChildFailed(f"{' '.join(cmd[2:4])} timed out after {timeout} s")
        status, usage = reaped
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Finished(
            out.read(),
            err.read(),
            proc.returncode,
            wall,
            usage.ru_maxrss / 1024,
            usage.ru_utime + usage.ru_stime,
        )


def run_fusillade(
    env: Env,
    label: str,
    jsonl: Path,
    database_url: str,
    args: Sequence[str],
    sample: Callable[[int], None],
    sample_interval: float = 0.5,
) -> Finished:
    """``python -m fusillade run JSONL`` on ``database_url`` with ``args``, in the children's
    environment (``child_environment``), ``sample(pid)`` from its start; its output file is
    removed. Raises ``ChildFailed`` when it does not exit 0."""
    out = env.workdir / f"{label}.out.jsonl"
    cmd = [
        sys.executable, "-m", "fusillade", "run", str(jsonl), "-o", str(out),
        "--database-url", database_url, "--progress-interval", "3600", *args,
    ]  # fmt: skip
    done = run_process(
        cmd,
        env=child_environment(),
        sample=sample,
        sample_interval=sample_interval,
        sample_at_once=True,
    )
    out.unlink(missing_ok=True)
    if done.returncode != 0:
        raise ChildFailed(f"fusillade run exited with {done.returncode}:\n{done.tail()}")
    return done


def _watch(
    proc: subprocess.Popen[str],
    out: Any,
    timeout: float,
    on_ready: Callable[[int], None] | None,
    sample: Callable[[int], None] | None,
    sample_interval: float,
    ready: bool = False,
) -> tuple[int, Any] | None:
    """Poll until ``proc`` exits: (wait status, rusage), or None after ``timeout``."""
    deadline = time.monotonic() + timeout
    ready = ready or (on_ready is None and sample is None)
    next_sample = 0.0
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            return status, usage
        now = time.monotonic()
        if now > deadline:
            return None
        if not ready:
            out.seek(0)
            if READY_LINE in out.read():
                ready = True
                if on_ready is not None:
                    on_ready(proc.pid)
        elif sample is not None and now >= next_sample:
            sample(proc.pid)
            next_sample = now + sample_interval
        time.sleep(0.01)


def kill_and_reap(proc: subprocess.Popen[Any]) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(proc.pid, 0)
    proc.returncode = -9


def stop_and_reap(proc: subprocess.Popen[Any], timeout: float = 30.0) -> float:
    """SIGTERM ``proc``, wait for it, and return its peak RSS in MiB (from wait4)."""
    proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return usage.ru_maxrss / 1024
        if time.monotonic() > deadline:
            kill_and_reap(proc)
            raise ChildFailed(f"process {proc.pid} did not stop within {timeout} s")
        time.sleep(0.05)


def run_child(name: str, params: dict[str, Any], **kwargs: Any) -> ChildResult:
    """Run ``benchmarks.child NAME`` (see ``run_process``) and decode its RESULT line."""
    return _decode(name, run_process(child_command(name, params), **kwargs))


def _decode(name: str, done: Finished) -> ChildResult:
    result: dict[str, Any] | None = None
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            result = json.loads(line[len(RESULT_PREFIX) :])
    if done.returncode != 0 or result is None:
        raise ChildFailed(f"child {name} exited with status {done.returncode}:\n{done.tail()}")
    return ChildResult(
        result,
        done.peak_rss_mib,
        done.wall_seconds,
        done.returncode,
        done.tail(),
        done.cpu_seconds,
    )


def run_children_together(
    name: str, params: list[dict[str, Any]], *, timeout: float = 1800.0
) -> list[ChildResult]:
    """``benchmarks.child NAME`` once per parameter set, all started at once (P1w), each
    reaped with ``os.wait4`` as it ends."""
    with contextlib.ExitStack() as stack:
        files = [stack.enter_context(_output_files()) for _ in params]
        start = time.perf_counter()
        procs = [
            subprocess.Popen(child_command(name, p), stdout=o, stderr=e, cwd=REPO_ROOT, text=True)
            for p, (o, e) in zip(params, files, strict=True)
        ]
        done: dict[int, Finished] = {}
        try:
            _reap_all(procs, files, start, time.monotonic() + timeout, done)
        except BaseException:
            for i, proc in enumerate(procs):
                if i not in done:
                    kill_and_reap(proc)
            raise
    return [_decode(name, done[i]) for i in range(len(procs))]


def _reap_all(
    procs: list[subprocess.Popen[str]],
    files: list[tuple[Any, Any]],
    start: float,
    deadline: float,
    done: dict[int, Finished],
) -> None:
    """Reap every one of ``procs`` into ``done`` (by index) as it ends."""
    while len(done) < len(procs):
        if time.monotonic() > deadline:
            raise ChildFailed(f"{len(procs) - len(done)} children still running at the timeout")
        for i, proc in enumerate(procs):
            if i in done:
                continue
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                out, err = files[i]
                out.seek(0)
                err.seek(0)
                done[i] = Finished(
                    out.read(),
                    err.read(),
                    proc.returncode,
                    time.perf_counter() - start,
                    usage.ru_maxrss / 1024,
                    usage.ru_utime + usage.ru_stime,
                )
        time.sleep(0.01)
