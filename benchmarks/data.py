"""P4 (ingest), P5 (download), P6 (daemon memory with a large queue).

P4 and P5 run in child processes doing only that, through the library and (when the
server is available) over HTTP against ``fusillade serve --no-daemon``; lines/s and peak
RSS of the process that holds the data. P5's batch is built fast, bypassing the daemon:
a seeded input file, the library's ``create_batch``, then one SQL UPDATE marking every
request completed with a canned body, then VACUUM ANALYZE. P6 samples a daemon's VmRSS
every 0.5 s while the queue holds the pending requests.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from benchmarks.common import (
    CANNED_COMPLETION,
    ChildFailed,
    Env,
    Row,
    fmt_mib,
    fmt_rate,
    median,
    run_child,
    vm_rss_mib,
    write_jsonl,
)
from benchmarks.database import complete_all, fresh_database, migrate, now, seed_batch
from benchmarks.server import running_server
from benchmarks.upstream import Upstreams

LINES_TARGET = ">= 50,000 lines/s, peak RSS < 300 MB"
MiB_300MB = 300e6 / 2**20  # the targets say MB; RSS is reported in MiB


def _met(rate: float, rss: float) -> bool:
    return rate >= 50_000 and rss < MiB_300MB


def _ingest_file(env: Env) -> Path:
    n = env.sizes.ingest_lines
    path = env.workdir / f"ingest-{n}.jsonl"
    if not path.exists():
        env.log(f"writing a {n:,}-line JSONL file")
        write_jsonl(path, n)
    return path


def p4(env: Env, up: Upstreams) -> list[Row]:
    n = env.sizes.ingest_lines
    path = _ingest_file(env)
    mib = path.stat().st_size / 2**20
    what = f"ingest {n:,} JSONL lines ({mib:,.0f} MiB)"
    lib = Row("P4", what + " (library create_file)", LINES_TARGET)
    rates, rss = [], []
    for i in range(env.runs):
        env.log(f"P4 run {i + 1}/{env.runs}: library ingest")
        with fresh_database(env.admin_url, f"p4_{i}") as url:
            child = run_child(
                "ingest",
                {"database_url": url, "path": str(path), "statement_timeout_ms": 3_600_000},
            )
        if child.result["lines"] != n:
            raise ChildFailed(f"ingest stored {child.result['lines']} of {n} lines")
        rates.append(child.result["rate"])
        rss.append(child.peak_rss_mib)
    lib.result = fmt_rate(median(rates), "lines/s")
    lib.peak_rss = fmt_mib(max(rss))
    lib.met = _met(median(rates), max(rss))
    lib.notes = [
        "child process doing only create_file (validation + COPY)",
        "repository opened with statement_timeout 1 h: the file is one COPY, which the "
        "default 30 s cancels (a 1,000,000-line file failed with it here)",
    ]
    lib.raw = {"rates": rates, "rss": rss}
    http = Row("P4", what + " (POST /v1/files)", LINES_TARGET)
    if not env.server_available:
        http.notes = [env.server_note]
        return [lib, http]
    rates, rss = [], []
    limits = {
        "FUSILLADE_SERVER_MAX_LINES": str(n + 1),
        "FUSILLADE_SERVER_MAX_UPLOAD_BYTES": str(path.stat().st_size * 2),
    }
    for i in range(env.runs):
        env.log(f"P4 run {i + 1}/{env.runs}: POST /v1/files")
        with fresh_database(env.admin_url, f"p4s_{i}") as url:
            with running_server(url, env=limits) as server:
                with path.open("rb") as f:
                    start = time.perf_counter()
                    r = httpx.post(
                        server.url + "/v1/files",
                        data={"purpose": "batch"},
                        files={"file": (path.name, f, "application/jsonl")},
                        timeout=None,
                    )
                    seconds = time.perf_counter() - start
                if r.status_code != 200:
                    raise ChildFailed(f"POST /v1/files: {r.status_code} {r.text[:300]}")
            rates.append(n / seconds)
            rss.append(server.peak_rss_mib)
    http.result = fmt_rate(median(rates), "lines/s")
    http.peak_rss = f"{fmt_mib(max(rss))} (server)"
    http.met = _met(median(rates), max(rss))
    http.notes = ["`fusillade serve --no-daemon` in a child; upload streamed by httpx"]
    http.raw = {"rates": rates, "rss": rss}
    return [lib, http]


def p5(env: Env, up: Upstreams) -> list[Row]:
    n = env.sizes.download_lines
    lib = Row("P5", f"download the output of a {n:,}-request batch (library)", LINES_TARGET)
    http = Row("P5", f"download the output of a {n:,}-request batch (GET content)", LINES_TARGET)
    with fresh_database(env.admin_url, "p5") as url:
        env.log(f"P5 setup: a batch of {n:,} requests, completed by one UPDATE")
        start = time.perf_counter()
        migrate(url)
        batch_id = seed_batch(url, n)
        complete_all(url, batch_id, CANNED_COMPLETION)
        setup = time.perf_counter() - start
        rates, rss = [], []
        for i in range(env.runs):
            env.log(f"P5 run {i + 1}/{env.runs}: library file_content")
            out = env.workdir / "p5-output.jsonl"
            child = run_child(
                "download", {"database_url": url, "batch_id": str(batch_id), "out": str(out)}
            )
            if child.result["lines"] != n:
                raise ChildFailed(f"downloaded {child.result['lines']} of {n} lines")
            rates.append(child.result["rate"])
            rss.append(child.peak_rss_mib)
            out.unlink()
        lib.result = fmt_rate(median(rates), "lines/s")
        lib.peak_rss = fmt_mib(max(rss))
        lib.met = _met(median(rates), max(rss))
        lib.notes = [
            f"setup bypasses the daemon ({setup:.0f} s: seeded file, create_batch, "
            "one UPDATE, VACUUM ANALYZE)",
            "child: engine.file_content of the output file, written to a file",
        ]
        lib.raw = {"rates": rates, "rss": rss, "setup_seconds": setup}
        if not env.server_available:
            http.notes = [env.server_note]
            return [lib, http]
        rates, rss = [], []
        from fusillade.core.ids import format_id
        from fusillade.store.postgres import PostgresRepository

        with PostgresRepository(url) as repo:
            view = repo.get_batch("default", batch_id, now=now())
        file_id = format_id("file", view.record.output_file_id)
        for i in range(env.runs):
            env.log(f"P5 run {i + 1}/{env.runs}: GET /v1/files/{{id}}/content")
            with running_server(url) as server:
                lines, seconds = _download(server.url + f"/v1/files/{file_id}/content")
            if lines != n:
                raise ChildFailed(f"GET content gave {lines} of {n} lines")
            rates.append(n / seconds)
            rss.append(server.peak_rss_mib)
        http.result = fmt_rate(median(rates), "lines/s")
        http.peak_rss = f"{fmt_mib(max(rss))} (server)"
        http.met = _met(median(rates), max(rss))
        http.notes = ["`fusillade serve --no-daemon` in a child; streamed by httpx"]
        http.raw = {"rates": rates, "rss": rss}
    return [lib, http]


def _download(url: str) -> tuple[int, float]:
    lines = 0
    start = time.perf_counter()
    with httpx.stream("GET", url, timeout=None) as r:
        if r.status_code != 200:
            r.read()
            raise ChildFailed(f"GET content: {r.status_code} {r.text[:300]}")
        for chunk in r.iter_bytes():
            lines += chunk.count(b"\n")
    return lines, time.perf_counter() - start


def p6(env: Env, up: Upstreams) -> list[Row]:
    n, seconds = env.sizes.p6_pending, env.sizes.p6_seconds
    rows = []
    with fresh_database(env.admin_url, "p6") as url:
        env.log(f"P6 setup: {n:,} pending requests")
        migrate(url)
        batch_id = seed_batch(url, n)
        for label, up_url in (("held upstream", up.held_url()), ("working", up.fast)):
            env.log(f"P6: daemon for {seconds:.0f} s, {label}")
            rows.append(_p6_run(env, url, batch_id, n, seconds, label, up, up_url))
    return rows


def _p6_run(
    env: Env, url: str, batch_id: object, n: int, seconds: float, label: str,
    up: Upstreams, up_url: str,
) -> Row:  # fmt: skip
    samples: list[tuple[float, float]] = []
    start = [0.0]

    def ready(pid: int) -> None:
        start[0] = time.monotonic()

    def sample(pid: int) -> None:
        rss = vm_rss_mib(pid)
        if rss is not None:
            samples.append((time.monotonic() - start[0], rss))

    child = run_child(
        "daemon",
        {
            "database_url": url,
            "upstream": up_url,
            "seconds": seconds,
            "batch_id": str(batch_id),
            "concurrency": env.sizes.p1_slots,
            "shutdown_grace": 0.5,
        },
        on_ready=ready,
        sample=sample,
    )
    row = Row("P6", f"daemon memory, {n:,} pending requests queued, {label}", "< 250 MB, flat")
    rss = [r for _, r in samples]
    # Start-up (first claims, client shards, pools) is not a trend: leave it out.
    warmup = min(5.0, seconds / 4)
    steady = [r for t, r in samples if t >= warmup] or rss
    q = max(1, len(steady) // 4)
    first, last = median(steady[:q]), median(steady[-q:])
    growth = (last - first) / first
    flat = abs(growth) < 0.05
    row.result = f"peak {fmt_mib(max(rss))}; first quarter {first:.0f}, last {last:.0f} MiB"
    row.result += f" ({growth:+.1%}: {'flat' if flat else 'NOT flat'})"
    row.peak_rss = f"{fmt_mib(child.peak_rss_mib)} (kernel, incl. shutdown)"
    row.met = max(rss) < 250e6 / 2**20 and flat
    row.notes = [
        f"upstream {up.describe(up_url)}",
        f"{len(samples)} VmRSS samples over {seconds:.0f} s, quarters after {warmup:.1f} s",
        f"{child.result['completed']:,} completed meanwhile",
    ]
    row.raw = {"samples": samples, "kernel_peak": child.peak_rss_mib}
    return row
