"""P8: how long a new batch waits before its first request reaches the upstream.

Over HTTP (when the server is available): ``fusillade serve`` with its daemon idle, the
upstream a recording server in this process; per trial, the time from sending
``POST /v1/batches`` to the first upstream request, both read on this process's clock.
Through the library: the same with the daemon, the upstream and ``create_batch`` in one
child process. Between trials the daemon idles 1-2 s (it waits for a NOTIFY or its 1 s
poll), varied so that trials do not line up with the poll.
"""

from __future__ import annotations

import time

import httpx

from benchmarks.common import ChildFailed, Env, Row, input_line, median, run_child
from benchmarks.database import fresh_database
from benchmarks.recorder import RecordingUpstream
from benchmarks.server import running_server
from benchmarks.upstream import Upstreams

TARGET = "< 100 ms"
LINES = 10


def _idle(base: float, trial: int) -> float:
    return base + 0.37 * (trial % 3)


def p8(env: Env, up: Upstreams) -> list[Row]:
    trials = env.sizes.p8_trials * env.runs
    http = Row("P8", "POST /v1/batches to the first upstream request (idle daemon)", TARGET)
    if env.server_available:
        env.log(f"P8: {trials} batches over HTTP")
        latencies = _over_http(env, trials)
        _fill(http, latencies, "`fusillade serve` (API + daemon) in a child")
    else:
        http.notes = [env.server_note]
    lib = Row("P8", "library create_batch call to the first upstream request (idle daemon)", TARGET)
    env.log(f"P8: {trials} batches through the library")
    with fresh_database(env.admin_url, "p8lib") as url:
        child = run_child(
            "first_request",
            {"database_url": url, "lines": LINES, "trials": trials, "idle": env.sizes.p8_idle},
        )
    _fill(lib, child.result["latencies"], "daemon, upstream and create_batch in one child")
    return [http, lib]


def _fill(row: Row, latencies: list[float], where: str) -> None:
    ms = sorted(x * 1000 for x in latencies)
    row.result = f"median {median(ms):.0f} ms, max {ms[-1]:.0f} ms"
    row.met = median(ms) < 100
    row.notes = [where, f"{len(ms)} batches of {LINES} requests"]
    row.raw = {"latencies_ms": ms}


def _over_http(env: Env, trials: int) -> list[float]:
    jsonl = "".join(input_line(i) + "\n" for i in range(LINES)).encode()
    latencies = []
    with (
        RecordingUpstream() as recorder,
        fresh_database(env.admin_url, "p8") as url,
        running_server(url, upstream=recorder.url) as server,
        httpx.Client(base_url=server.url + "/v1", timeout=30) as client,
    ):
        r = client.post(
            "/files",
            data={"purpose": "batch"},
            files={"file": ("p8.jsonl", jsonl, "application/jsonl")},
        )
        if r.status_code != 200:
            raise ChildFailed(f"POST /v1/files: {r.status_code} {r.text[:300]}")
        file_id = r.json()["id"]
        body = {
            "input_file_id": file_id,
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
        }
        client.get("/batches")  # warm the connection and the route
        for trial in range(trials):
            time.sleep(_idle(env.sizes.p8_idle, trial))
            recorder.arm()
            start = time.perf_counter()
            r = client.post("/batches", json=body)
            if r.status_code != 200:
                raise ChildFailed(f"POST /v1/batches: {r.status_code} {r.text[:300]}")
            latencies.append(recorder.wait_first(30.0) - start)
            _wait_done(client, r.json()["id"])
    return latencies


def _wait_done(client: httpx.Client, batch_id: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = client.get(f"/batches/{batch_id}").json()["status"]
        if status in ("completed", "failed", "expired", "cancelled"):
            return
        time.sleep(0.05)
    raise ChildFailed(f"batch {batch_id} did not finish within 60 s")
