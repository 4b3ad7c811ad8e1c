"""P1, P1w, P1c, P2, P3: requests per second of fusillade against its baselines, side by side.

Every measurement is a child process; each run measures the baseline and fusillade one
after the other, so machine noise hits both, and the ratio reported is the median of the
per-run ratios. fusillade's library is timed from ``create_batch`` to the batch being
terminal (``engine.wait`` polling every 100 ms); storing its input file is not timed
(that is P4). ``fusillade run`` is timed as the wall time of its whole process.

The bare-httpx baseline of P1 and P3 is the best of several client layouts
(``baselines.LAYOUTS``), probed in the same run at a reduced size (issue 16): the layout
with the best median rate is then measured at full size beside fusillade in every run.
"""

from __future__ import annotations

import importlib.util
from importlib.metadata import version
from pathlib import Path
from typing import Any

from benchmarks.baselines import LAYOUTS, Layout
from benchmarks.common import (
    ChildFailed,
    ChildResult,
    Env,
    Finished,
    Row,
    fmt_mib,
    fmt_rate,
    median,
    run_child,
    run_children_together,
    run_fusillade,
    write_jsonl,
)
from benchmarks.cpu import PostgresCpu, tree_cpu
from benchmarks.database import fresh_database
from benchmarks.upstream import Upstreams

PGQUEUER_BATCH_SIZE = 100  # jobs per dequeue; max_concurrent_tasks is the slot count
P1_TARGET = ">= 1.5x"
P1W_TARGET = ">= 0.9x"
P3_TARGET = ">= 0.95"
# P1c's "today": CPU seconds (every process, PostgreSQL included, the upstream apart) per
# 1,000 requests of `fusillade run` with default workers at commit 11643d7, measured by
# this harness (docs/performance.md, "Issue 16: the baseline and P1c").
P1C_TODAY: float | None = 1.28
P1C_TODAY_COMMIT = "11643d7"
P1C_TARGET = "reported; half of today's" + (
    f" ({P1C_TODAY:.2f} s at {P1C_TODAY_COMMIT})" if P1C_TODAY is not None else ""
)
SAMPLE_INTERVAL = 0.2  # seconds between two samples of the PostgreSQL backends' CPU


def _httpx(up_url: str, n: int, slots: int, layout: Layout) -> ChildResult:
    child = run_child(
        "httpx",
        {"upstream": up_url, "n": n, "concurrency": slots, "layout": layout.params()},
    )
    if child.result["errors"]:
        raise ChildFailed(f"bare httpx ({layout}): {child.result['error_kinds']}")
    return child


def _fusillade(
    env: Env, label: str, up_url: str, n: int, slots: int, *, slow_start: bool = True
) -> Any:
    with fresh_database(env.admin_url, label) as url:
        child = run_child(
            "fusillade_batch",
            {
                "database_url": url,
                "upstream": up_url,
                "n": n,
                "concurrency": slots,
                "per_client": env.sizes.per_client,
                "slow_start": slow_start,
            },
        )
    if child.result["completed"] != n:
        raise ChildFailed(f"fusillade completed {child.result['completed']} of {n}")
    return child


def _ratios(pairs: list[tuple[float, float]]) -> tuple[float, list[float]]:
    ratios = [a / b for a, b in pairs]
    return median(ratios), ratios


def probe(
    env: Env, label: str, up_url: str, n: int, slots: int
) -> tuple[Layout, dict[Layout, list[float]]]:
    """Every layout of bare httpx, ``n`` requests each, ``env.runs`` times (the order
    rotated each run): the one with the best median rate, and every rate."""
    rates: dict[Layout, list[float]] = {layout: [] for layout in LAYOUTS}
    for i in range(env.runs):
        env.log(
            f"{label} probe {i + 1}/{env.runs}: bare httpx in {len(LAYOUTS)} layouts, "
            f"{n:,} requests each"
        )
        k = i % len(LAYOUTS)
        for layout in LAYOUTS[k:] + LAYOUTS[:k]:
            rates[layout].append(_httpx(up_url, n, slots, layout).result["rate"])
    best = max(LAYOUTS, key=lambda layout: median(rates[layout]))
    return best, rates


def _probed(rates: dict[Layout, list[float]], slots: int, n: int) -> str:
    found = "; ".join(
        f"{layout.describe(slots)} {fmt_rate(median(r))}"
        for layout, r in sorted(rates.items(), key=lambda kv: -median(kv[1]))
    )
    return f"layouts probed ({n:,} requests each, median req/s): {found}"


class Cpu:
    """CPU seconds of one measured run: the process (and its reaped children), its
    database's PostgreSQL backends, the server's background processes, the upstream."""

    def __init__(self, env: Env, database_url: str | None, upstream_pid: int | None) -> None:
        self.pg = PostgresCpu(env.admin_url, database_url) if database_url else None
        self.upstream_pid = upstream_pid
        self.parts: dict[str, float | None] = {}

    def __enter__(self) -> Cpu:
        if self.pg is not None:
            self.pg.start()
        self.up_before = tree_cpu(self.upstream_pid)
        return self

    def __exit__(self, *exc: object) -> None:
        up_after = tree_cpu(self.upstream_pid)
        if self.pg is not None:
            self.parts.update(self.pg.stop())
        if self.up_before is not None and up_after is not None:
            self.parts["upstream"] = up_after - self.up_before

    def sample(self, pid: int) -> None:
        if self.pg is not None:
            self.pg.sample(pid)
        # a cross-check of wait4's figure (a lower bound: the last sample before the end)
        self.parts["process_sampled"] = tree_cpu(pid)

    def total(self, process: float) -> dict[str, float | None]:
        """Every part, and ``total``: the process and PostgreSQL (not the upstream)."""
        out = {"process": process, **self.parts}
        out["total"] = process + sum(out.get(k) or 0.0 for k in ("backends", "background"))
        return out


SAMPLED: dict[str, Any] = {"sample_interval": SAMPLE_INTERVAL, "sample_at_once": True}


def _fusillade_cpu(env: Env, label: str, up: Upstreams, n: int, slots: int) -> Any:
    """The library (one daemon in the child), with its CPU (``result["cpu"]``)."""
    with fresh_database(env.admin_url, label) as url, Cpu(env, url, up.pids.get(up.fast)) as cpu:
        child = run_child(
            "fusillade_batch",
            {
                "database_url": url,
                "upstream": up.fast,
                "n": n,
                "concurrency": slots,
                "per_client": env.sizes.per_client,
            },
            sample=cpu.sample,
            **SAMPLED,
        )
    if child.result["completed"] != n:
        raise ChildFailed(f"fusillade completed {child.result['completed']} of {n}")
    child.result["cpu"] = cpu.total(child.cpu_seconds)
    return child


def _httpx_cpu(up: Upstreams, n: int, slots: int, layout: Layout, env: Env) -> ChildResult:
    with Cpu(env, None, up.pids.get(up.fast)) as cpu:
        child = _httpx(up.fast, n, slots, layout)
    child.result["cpu"] = cpu.total(child.cpu_seconds)
    return child


def _together(up_url: str, n: int, slots: int, layout: Layout, processes: int) -> dict[str, Any]:
    """P1w: ``processes`` bare-httpx processes started at once, each ``n / processes``
    requests with ``slots / processes`` tasks; the rate is ``n`` over the time from the
    first one's start of sending to the last one's end (``time.monotonic``, one clock)."""
    params = [
        {
            "upstream": up_url,
            "n": n // processes + (k < n % processes),
            "concurrency": max(1, slots // processes + (k < slots % processes)),
            "layout": layout.params(),
        }
        for k in range(processes)
    ]
    children = run_children_together("httpx", params)
    for c in children:
        if c.result["errors"]:
            raise ChildFailed(f"bare httpx ({layout}): {c.result['error_kinds']}")
    seconds = max(c.result["ended"] for c in children) - min(c.result["started"] for c in children)
    return {
        "rate": n / seconds,
        "rates": [c.result["rate"] for c in children],
        "wall_rate": n / max(c.wall_seconds for c in children),
        "cpu": sum(c.cpu_seconds for c in children),
        "peak_rss_mib": max(c.peak_rss_mib for c in children),
    }


def default_workers() -> int:
    """The number of daemon processes ``fusillade run`` uses without ``--workers``."""
    from fusillade.server.workers import worker_count

    return worker_count(None)


def p1(env: Env, up: Upstreams) -> list[Row]:
    s = env.sizes
    n, slots = s.p1_requests, s.p1_slots
    workers = default_workers()
    measure = f"durable throughput, {n:,} requests, {slots} slots, zero-latency upstream"
    main = Row("P1", measure + f" (`fusillade run`, default workers: {workers})", P1_TARGET)
    one = Row("P1", measure + " (`fusillade run --workers 1`)", "(informative)")
    lib = Row("P1", measure + " (library, one daemon)", "(informative)")
    many = Row(
        "P1w",
        f"the same vs {workers} bare httpx processes (as many as fusillade's workers)",
        P1W_TARGET,
    )
    best, probed = probe(env, "P1", up.fast, s.p1_probe_requests, slots)
    env.log(f"P1 baseline: {best.describe(slots)}")
    jsonl = write_jsonl(env.workdir / f"p1-{n}.jsonl", n)
    rates: dict[str, list[float]] = {k: [] for k in ("httpx", "httpxN", "run", "run1", "lib")}
    rss: dict[str, list[float]] = {k: [] for k in rates}
    cpu: dict[str, list[dict[str, float | None]]] = {k: [] for k in ("httpx", "run", "run1", "lib")}
    together: list[dict[str, Any]] = []
    for i in range(env.runs):
        env.log(
            f"P1 run {i + 1}/{env.runs}: bare httpx, fusillade run, {workers} bare httpx "
            "processes, fusillade run --workers 1, fusillade library"
        )
        b = _httpx_cpu(up, n, slots, best, env)
        rates["httpx"].append(b.result["rate"])
        rss["httpx"].append(b.peak_rss_mib)
        cpu["httpx"].append(b.result["cpu"])
        # `run` right after its baseline, then P1w's processes between the two `run`s
        for key, count in (("run", None), ("httpxN", workers), ("run1", 1)):
            if key == "httpxN":
                t = _together(up.fast, n, slots, best, workers)
                together.append(t)
                rates[key].append(t["rate"])
                rss[key].append(t["peak_rss_mib"])
            else:
                done, parts = _run_command(env, f"p1{key}_{i}", jsonl, up, slots, count)
                rates[key].append(n / done.wall_seconds)
                rss[key].append(done.peak_rss_mib)
                cpu[key].append(parts)
        f = _fusillade_cpu(env, f"p1_{i}", up, n, slots)
        rates["lib"].append(f.result["rate"])
        rss["lib"].append(f.peak_rss_mib)
        cpu["lib"].append(f.result["cpu"])
    baseline = f"best bare httpx in one process ({best.describe(slots)}): "
    baseline += fmt_rate(median(rates["httpx"]))
    upstream = f"upstream {up.describe(up.fast)}"
    for row, key in ((main, "run"), (one, "run1"), (lib, "lib")):
        ratio, ratios = _ratios(list(zip(rates[key], rates["httpx"], strict=True)))
        row.result = fmt_rate(median(rates[key]))
        row.baseline = baseline
        row.ratio = f"{ratio:.2f}"
        row.peak_rss = f"{fmt_mib(max(rss[key]))} (httpx {fmt_mib(max(rss['httpx']))})"
        row.notes = [upstream, "per-run ratios " + ", ".join(f"{r:.2f}" for r in ratios)]
        row.raw = {key: rates[key], "httpx": rates["httpx"], "ratios": ratios}
    main.met = float(main.ratio) >= 1.5
    main.notes += [
        "wall time of the whole process: start-up, validation, ingest, batch, writing "
        "results.jsonl",
        _probed(probed, slots, s.p1_probe_requests),
    ]
    main.raw["layout"] = best.params()
    main.raw["probe"] = {layout.describe(slots): r for layout, r in probed.items()}
    one.notes.append("as above, one daemon process")
    lib.notes.append("timed from create_batch to the batch terminal (one daemon in the child)")
    ratio, ratios = _ratios(list(zip(rates["run"], rates["httpxN"], strict=True)))
    many.result = f"{fmt_rate(median(rates['run']))} (fusillade run)"
    many.baseline = (
        f"{workers} bare httpx processes ({best.describe(-(-slots // workers))} each): "
        f"{fmt_rate(median(rates['httpxN']))}"
    )
    many.ratio = f"{ratio:.2f}"
    many.met = ratio >= 0.9
    many.peak_rss = f"httpx {fmt_mib(max(rss['httpxN']))} (largest process)"
    many.notes = [
        upstream,
        "per-run ratios " + ", ".join(f"{r:.2f}" for r in ratios),
        f"each process {n // workers:,} requests, {slots // workers} tasks, started at once; "
        "timed from the first one's start of sending to the last one's end",
    ]
    many.raw = {"run": rates["run"], "httpx_processes": together, "ratios": ratios}
    return [main, one, lib, many, *_p1c(n, workers, best.describe(slots), cpu, up)]


def _per_thousand(n: int, parts: list[dict[str, float | None]], key: str) -> float | None:
    values = [p.get(key) for p in parts]
    if not values or any(v is None for v in values):
        return None
    return median([1000 * v / n for v in values if v is not None])


def _p1c(
    n: int,
    workers: int,
    layout: str,
    cpu: dict[str, list[dict[str, float | None]]],
    up: Upstreams,
) -> list[Row]:
    """P1c: CPU seconds per 1,000 requests, every process (PostgreSQL included; the
    upstream apart), for each subject of P1."""
    subjects = (
        ("run", f"`fusillade run`, default workers ({workers})", P1C_TARGET),
        ("run1", "`fusillade run --workers 1`", "(informative)"),
        ("lib", "library, one daemon", "(informative)"),
        ("httpx", f"best bare httpx in one process ({layout})", "(informative)"),
    )
    rows = []
    for key, who, target in subjects:
        row = Row("P1c", f"CPU seconds per 1,000 requests of P1: {who}", target)
        total = _per_thousand(n, cpu[key], "total")
        assert total is not None
        row.result = f"{total:.2f} s"
        parts = []
        names = (
            ("process", "its processes (wait4, reaped children included)"),
            ("backends", "its PostgreSQL backends"),
            ("background", "PostgreSQL background processes (shared server: an upper bound)"),
            ("upstream", f"the upstream, not in the total ({up.kind})"),
        )
        for part, text in names:
            value = _per_thousand(n, cpu[key], part)
            if value is not None:
                parts.append(f"{text} {value:.3f}")
        row.notes = ["per 1,000 requests, medians: " + ", ".join(parts)]
        if key == "run" and P1C_TODAY is not None:
            row.baseline = f"today ({P1C_TODAY_COMMIT}): {P1C_TODAY:.2f} s"
            row.ratio = f"{total / P1C_TODAY:.2f}"
            row.met = total <= P1C_TODAY / 2
        row.raw = {"n": n, "cpu_seconds": cpu[key]}
        rows.append(row)
    return rows


def _run_command(
    env: Env, label: str, jsonl: Path, up: Upstreams, slots: int, workers: int | None
) -> tuple[Finished, dict[str, float | None]]:
    """``python -m fusillade run`` on a fresh database (``--workers`` when given): the
    finished process and its CPU (see ``Cpu``)."""
    args = ["--upstream", up.fast, "--concurrency", str(slots)]
    if workers is not None:
        args += ["--workers", str(workers)]
    with fresh_database(env.admin_url, label) as url, Cpu(env, url, up.pids.get(up.fast)) as cpu:
        done = run_fusillade(env, label, jsonl, url, args, cpu.sample, SAMPLE_INTERVAL)
    return done, cpu.total(done.cpu_seconds)


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
        P3_TARGET,
    )
    # The target row's upstream has slow start off, as P12's: the user P3 stands for runs
    # a self-hosted server, which docs/scheduling.md tells to set slow_start = false. With
    # the default (4 requests in flight until the first answer, 500 ms here) the first
    # answer's wait is lost once: the informative row measures that.
    slow_start = Row(
        "P3", row.measure + " (slow start on, the default for an upstream)", "(informative)"
    )
    url = up.slow_url(latency)
    best, probed = probe(env, "P3", url, s.p3_probe_requests, slots)
    env.log(f"P3 baseline: {best.describe(slots)}")
    base_rates, lib_rates, lib_rss, slow_rates = [], [], [], []
    for i in range(env.runs):
        env.log(f"P3 run {i + 1}/{env.runs}: bare httpx, fusillade library (slow start off, on)")
        b = _httpx(url, n, slots, best)
        f = _fusillade(env, f"p3_{i}", url, n, slots, slow_start=False)
        base_rates.append(b.result["rate"])
        lib_rates.append(f.result["rate"])
        lib_rss.append(f.peak_rss_mib)
        slow_rates.append(_fusillade(env, f"p3s_{i}", url, n, slots).result["rate"])
    ratio, ratios = _ratios(list(zip(lib_rates, base_rates, strict=True)))
    slow_ratio, slow_ratios = _ratios(list(zip(slow_rates, base_rates, strict=True)))
    row.result = fmt_rate(median(lib_rates))
    row.baseline = (
        f"best bare httpx ({best.describe(slots)}): {fmt_rate(median(base_rates))} "
        f"(ideal {fmt_rate(ideal)})"
    )
    row.ratio = f"{ratio:.2f}"
    row.met = ratio >= 0.95
    row.peak_rss = fmt_mib(max(lib_rss))
    row.notes = [
        f"upstream {up.describe(url)}",
        "per-run ratios " + ", ".join(f"{r:.2f}" for r in ratios),
        f"fusillade / ideal {median(lib_rates) / ideal:.2f}",
        "library, one daemon, slow start off ([upstreams] slow_start = false)",
        _probed(probed, slots, s.p3_probe_requests),
    ]
    row.raw = {
        "httpx": base_rates,
        "fusillade": lib_rates,
        "ratios": ratios,
        "ideal": ideal,
        "layout": best.params(),
        "probe": {layout.describe(slots): r for layout, r in probed.items()},
    }
    slow_start.result = fmt_rate(median(slow_rates))
    slow_start.baseline = row.baseline
    slow_start.ratio = f"{slow_ratio:.2f}"
    slow_start.notes = [
        "per-run ratios " + ", ".join(f"{r:.2f}" for r in slow_ratios),
        "library, one daemon; 4 requests in flight until the first answer (docs/scheduling.md)",
    ]
    slow_start.raw = {"fusillade": slow_rates, "ratios": slow_ratios}
    return [row, slow_start]
