"""P1, P2, P3: requests per second of fusillade against its baselines, side by side.

Every measurement is a child process; each run measures the baseline and fusillade one
after the other, so machine noise hits both, and the ratio reported is the median of the
per-run ratios. fusillade is timed from ``create_batch`` to the batch being terminal
(``engine.wait`` polling every 100 ms); storing its input file is not timed (that is P4).
"""

from __future__ import annotations

import importlib.util
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

from benchmarks.common import (
    ChildFailed,
    Env,
    Row,
    fmt_mib,
    fmt_rate,
    median,
    run_child,
    run_process,
    write_jsonl,
)
from benchmarks.database import fresh_database
from benchmarks.upstream import Upstreams

PGQUEUER_BATCH_SIZE = 100  # jobs per dequeue; max_concurrent_tasks is the slot count


def _httpx(up_url: str, n: int, slots: int, per_client: int) -> Any:
    return run_child(
        "httpx", {"upstream": up_url, "n": n, "concurrency": slots, "per_client": per_client}
    )


def _fusillade(env: Env, label: str, up_url: str, n: int, slots: int) -> Any:
    with fresh_database(env.admin_url, label) as url:
        child = run_child(
            "fusillade_batch",
            {
                "database_url": url,
                "upstream": up_url,
                "n": n,
                "concurrency": slots,
                "per_client": env.sizes.per_client,
            },
        )
    if child.result["completed"] != n:
        raise ChildFailed(f"fusillade completed {child.result['completed']} of {n}")
    return child


def _ratios(pairs: list[tuple[float, float]]) -> tuple[float, list[float]]:
    ratios = [a / b for a, b in pairs]
    return median(ratios), ratios


def _shards(slots: int, per_client: int) -> str:
    return f"{-(-slots // per_client)} clients x {per_client}"


def p1(env: Env, up: Upstreams) -> list[Row]:
    s = env.sizes
    n, slots = s.p1_requests, s.p1_slots
    target = ">= 0.8"
    measure = f"durable throughput, {n:,} requests, {slots} slots, zero-latency upstream"
    lib = Row("P1", measure + " (library)", target)
    cmd = Row("P1", measure + " (`fusillade run` command)", "(informative)")
    jsonl = write_jsonl(env.workdir / f"p1-{n}.jsonl", n)
    base_rates, lib_rates, cmd_rates = [], [], []
    base_rss, lib_rss, cmd_rss = [], [], []
    for i in range(env.runs):
        env.log(f"P1 run {i + 1}/{env.runs}: bare httpx, fusillade library, fusillade run")
        b = _httpx(up.fast, n, slots, s.per_client)
        f = _fusillade(env, f"p1_{i}", up.fast, n, slots)
        c = _run_command(env, f"p1run_{i}", jsonl, up.fast, slots)
        base_rates.append(b.result["rate"])
        lib_rates.append(f.result["rate"])
        cmd_rates.append(n / c[0])
        base_rss.append(b.peak_rss_mib)
        lib_rss.append(f.peak_rss_mib)
        cmd_rss.append(c[1])
    ratio, ratios = _ratios(list(zip(lib_rates, base_rates, strict=True)))
    baseline = f"bare httpx under trio ({_shards(slots, s.per_client)}): "
    baseline += fmt_rate(median(base_rates))
    lib.result = fmt_rate(median(lib_rates))
    lib.baseline = baseline
    lib.ratio = f"{ratio:.2f}"
    lib.met = ratio >= 0.8
    lib.peak_rss = f"{fmt_mib(max(lib_rss))} (httpx {fmt_mib(max(base_rss))})"
    lib.notes = [
        f"upstream {up.describe(up.fast)}",
        "per-run ratios " + ", ".join(f"{r:.2f}" for r in ratios),
        "timed from create_batch to the batch terminal",
    ]
    lib.raw = {"httpx": base_rates, "fusillade": lib_rates, "ratios": ratios}
    cratio, cratios = _ratios(list(zip(cmd_rates, base_rates, strict=True)))
    cmd.result = fmt_rate(median(cmd_rates))
    cmd.baseline = baseline
    cmd.ratio = f"{cratio:.2f}"
    cmd.peak_rss = fmt_mib(max(cmd_rss))
    cmd.notes = [
        "wall time of the whole process: start-up, validation, ingest, batch, "
        "writing results.jsonl",
    ]
    cmd.raw = {"run": cmd_rates, "ratios": cratios}
    return [lib, cmd]


def _run_command(env: Env, label: str, jsonl: Path, up_url: str, slots: int) -> tuple[float, float]:
    """``python -m fusillade run`` on a fresh database: (wall seconds, peak RSS MiB)."""
    with fresh_database(env.admin_url, label) as url:
        out = env.workdir / f"{label}.out.jsonl"
        done = run_process(
            [
                sys.executable,
                "-m",
                "fusillade",
                "run",
                str(jsonl),
                "-o",
                str(out),
                "--upstream",
                up_url,
                "--concurrency",
                str(slots),
                "--database-url",
                url,
                "--progress-interval",
                "3600",
            ]
        )
    if done.returncode != 0:
        raise ChildFailed(f"fusillade run exited with {done.returncode}:\n{done.tail()}")
    return done.wall_seconds, done.peak_rss_mib


def p2(env: Env, up: Upstreams) -> list[Row]:
    s = env.sizes
    n, slots = s.p1_requests, s.p1_slots
    measure = f"the same job ({n:,} requests, {slots} slots) vs pgqueuer"
    row = Row("P2", measure + " (psycopg driver)", ">= 2x")
    extra = Row("P2", measure + " (asyncpg driver)", "(informative)")
    if not _importable("pgqueuer"):
        row.notes = ["not measured: pgqueuer is not installed (pip install pgqueuer)"]
        return [row]
    drivers = ["psycopg"]
    if s.informative and _importable("asyncpg"):
        drivers.append("asyncpg")
    lib_rates: list[float] = []
    pgq: dict[str, list[float]] = {d: [] for d in drivers}
    pgq_rss: dict[str, list[float]] = {d: [] for d in drivers}
    for i in range(env.runs):
        env.log(f"P2 run {i + 1}/{env.runs}: fusillade library, pgqueuer ({', '.join(drivers)})")
        lib_rates.append(_fusillade(env, f"p2_{i}", up.fast, n, slots).result["rate"])
        for driver in drivers:
            with fresh_database(env.admin_url, f"p2q_{i}") as url:
                q = run_child(
                    "pgqueuer",
                    {
                        "database_url": url,
                        "driver": driver,
                        "upstream": up.fast,
                        "n": n,
                        "concurrency": slots,
                        "per_client": s.per_client,
                        "batch_size": _pgqueuer_batch(slots),
                    },
                )
            if q.result["stored"] != n:
                raise ChildFailed(f"pgqueuer stored {q.result['stored']} of {n}")
            pgq[driver].append(q.result["rate"])
            pgq_rss[driver].append(q.peak_rss_mib)
    how = (
        f"asyncio, batch_size {_pgqueuer_batch(slots)}, max_concurrent_tasks {slots}, "
        "one INSERT per job through a psycopg pool of 8; timed from enqueue to the last job's end"
    )
    rows = []
    for driver, r in (("psycopg", row), ("asyncpg", extra)):
        if driver not in pgq:
            continue
        ratio, ratios = _ratios(list(zip(lib_rates, pgq[driver], strict=True)))
        r.result = f"{fmt_rate(median(lib_rates))} (fusillade)"
        r.baseline = f"pgqueuer {version('pgqueuer')}: {fmt_rate(median(pgq[driver]))}"
        r.ratio = f"{ratio:.2f}"
        r.peak_rss = f"pgqueuer {fmt_mib(max(pgq_rss[driver]))}"
        r.notes = [
            f"upstream {up.describe(up.fast)}",
            f"pgqueuer: {how}",
            "per-run ratios " + ", ".join(f"{x:.2f}" for x in ratios),
        ]
        r.raw = {"fusillade": lib_rates, "pgqueuer": pgq[driver], "ratios": ratios}
        rows.append(r)
    row.met = float(row.ratio) >= 2.0
    return rows


def _pgqueuer_batch(slots: int) -> int:
    # pgqueuer wants max_concurrent_tasks >= 2 * batch_size
    return min(PGQUEUER_BATCH_SIZE, slots // 2)


def _importable(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def p3(env: Env, up: Upstreams) -> list[Row]:
    s = env.sizes
    n, slots, latency = s.p3_requests, s.p3_slots, s.p3_latency
    ideal = slots / latency
    row = Row(
        "P3",
        f"pipe fullness: {n:,} requests, {slots} slots, {latency * 1000:.0f} ms upstream",
        ">= 0.9",
    )
    url = up.slow_url(latency)
    base_rates, lib_rates, lib_rss = [], [], []
    for i in range(env.runs):
        env.log(f"P3 run {i + 1}/{env.runs}: bare httpx, fusillade library")
        b = _httpx(url, n, slots, s.per_client)
        f = _fusillade(env, f"p3_{i}", url, n, slots)
        base_rates.append(b.result["rate"])
        lib_rates.append(f.result["rate"])
        lib_rss.append(f.peak_rss_mib)
    ratio, ratios = _ratios(list(zip(lib_rates, base_rates, strict=True)))
    row.result = fmt_rate(median(lib_rates))
    row.baseline = (
        f"bare httpx ({_shards(slots, s.per_client)}): {fmt_rate(median(base_rates))} "
        f"(ideal {fmt_rate(ideal)})"
    )
    row.ratio = f"{ratio:.2f}"
    row.met = ratio >= 0.9
    row.peak_rss = fmt_mib(max(lib_rss))
    row.notes = [
        f"upstream {up.describe(url)}",
        "per-run ratios " + ", ".join(f"{r:.2f}" for r in ratios),
        f"fusillade / ideal {median(lib_rates) / ideal:.2f}",
    ]
    row.raw = {"httpx": base_rates, "fusillade": lib_rates, "ratios": ratios, "ideal": ideal}
    return [row]
