"""P12: thousands in flight against a slow upstream (issue 16).

LLM upstreams are slow (seconds a request) and wide: ``p12_slots`` slots against an
upstream answering after ``p12_latency`` s, ``p12_requests`` requests, through the
library (the daemon in the child process, slow start off: the upstream is known, and
slow start would cost one latency of the run). Reported: requests a second against the
ideal (slots / latency), the child's peak RSS, its CPU time per request (every thread),
its PostgreSQL backends' and the upstream's, and how soon freed slots are claimed again
after the first wave of answers (the claim loop's timeline).
"""

from __future__ import annotations

import contextlib
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
    run_fusillade,
    write_jsonl,
)
from benchmarks.cpu import tree_cpu
from benchmarks.database import fresh_database
from benchmarks.upstream import Upstreams

P12_TARGET = ">= 0.9 of ideal, peak RSS < 500 MB"


def refill(claims: list[list[float]], latency: float, slots: int) -> dict[str, float | None]:
    """When freed slots were claimed again after the first wave: the first wave is what
    was claimed in the first half latency; its answers are due a latency after its first
    claim. Seconds from then to the next claim, and to 90% of the slots claimed again."""
    claims = [c for c in claims if c[1] > 0]
    if not claims:
        return {"first_wave": 0, "next_claim": None, "refilled_90": None}
    t0 = claims[0][0]
    wave = sum(n for t, n in claims if t < t0 + latency / 2)
    due = t0 + latency
    later = [(t, n) for t, n in claims if t >= t0 + latency / 2 and n > 0]
    out: dict[str, float | None] = {"first_wave": wave, "next_claim": None, "refilled_90": None}
    if later:
        out["next_claim"] = later[0][0] - due
        total = 0
        for t, n in later:
            total += n
            if total >= 0.9 * min(wave, slots):
                out["refilled_90"] = t - due
                break
    return out


class TreeRss:
    """The largest sum of the resident sets of a process and its children seen while it
    ran (``run --workers N`` is N processes: wait4's ``ru_maxrss`` is only the largest)."""

    def __init__(self) -> None:
        self.peak_mib = 0.0

    def sample(self, pid: int) -> None:
        try:
            import psutil
        except ImportError:
            return
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            total = 0
            for p in [proc, *proc.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    total += p.memory_info().rss
            self.peak_mib = max(self.peak_mib, total / 2**20)


RUN_CONFIG = """\
[upstreams.bench]
base_url = "{url}"
slow_start = false

[models."bench-model"]
upstream = "bench"
concurrency = {slots}
"""


def _run_command(
    env: Env, label: str, jsonl: Path, url: str, slots: int
) -> tuple[float, float, float]:
    """``fusillade run`` with default workers (no ``FUSILLADE_*`` variables), slow start
    off as for the library: (wall seconds, peak RSS of the process tree MiB, CPU s of it
    and of the workers it reaped)."""
    config = env.workdir / f"{label}.toml"
    config.write_text(RUN_CONFIG.format(url=url, slots=slots))
    rss = TreeRss()
    with fresh_database(env.admin_url, label) as db:
        done = run_fusillade(env, label, jsonl, db, ["--config", str(config)], rss.sample)
    return done.wall_seconds, max(rss.peak_mib, done.peak_rss_mib), done.cpu_seconds


def p12(env: Env, up: Upstreams) -> list[Row]:
    s = env.sizes
    n, slots, latency = s.p12_requests, s.p12_slots, s.p12_latency
    ideal = slots / latency
    row = Row(
        "P12",
        f"thousands in flight: {n:,} requests, {slots:,} slots, {latency:g} s upstream",
        P12_TARGET,
    )
    url = up.delayed_url(latency)
    upstream_pid = up.pids.get(url)
    rates: list[float] = []
    rss: list[float] = []
    cpu_ms: list[float] = []
    pg_ms: list[float] = []
    up_ms: list[float] = []
    refills: list[dict[str, Any]] = []
    timelines: list[list[tuple[float, int]]] = []
    jsonl = write_jsonl(env.workdir / f"p12-{n}.jsonl", n)
    cmd_rates: list[float] = []
    cmd_rss: list[float] = []
    cmd_cpu_ms: list[float] = []
    for i in range(env.runs):
        env.log(f"P12 run {i + 1}/{env.runs}: fusillade library, {slots} slots")
        up_before = tree_cpu(upstream_pid)
        with fresh_database(env.admin_url, f"p12_{i}") as db:
            child = run_child(
                "inflight",
                {
                    "database_url": db,
                    "upstream": url,
                    "n": n,
                    "concurrency": slots,
                    "per_client": s.per_client,
                    "slow_start": False,
                },
            )
        up_after = tree_cpu(upstream_pid)
        r = child.result
        if r["completed"] != n:
            raise ChildFailed(f"fusillade completed {r['completed']} of {n}")
        rates.append(r["rate"])
        rss.append(child.peak_rss_mib)
        cpu_ms.append(1000 * r["cpu_seconds"] / n)
        if r["pg_cpu_seconds"] is not None:
            pg_ms.append(1000 * r["pg_cpu_seconds"] / n)
        if up_before is not None and up_after is not None:
            up_ms.append(1000 * (up_after - up_before) / n)
        refills.append(refill(r["claims"], latency, slots))
        timelines.append([(round(t, 3), k) for t, k in r["claims"] if k])
        env.log(f"P12 run {i + 1}/{env.runs}: fusillade run, default workers, {slots} slots")
        wall, peak, cpu = _run_command(env, f"p12run_{i}", jsonl, url, slots)
        cmd_rates.append(n / wall)
        cmd_rss.append(peak)
        cmd_cpu_ms.append(1000 * cpu / n)
    rate = median(rates)
    ratio = rate / ideal
    row.result = fmt_rate(rate)
    row.baseline = f"ideal {fmt_rate(ideal)} (slots / latency)"
    row.ratio = f"{ratio:.2f}"
    row.peak_rss = fmt_mib(max(rss))
    row.met = ratio >= 0.9 and max(rss) < 500
    cpu = f"CPU per request: fusillade {median(cpu_ms):.2f} ms (every thread)"
    if pg_ms:
        cpu += f", its PostgreSQL backends {median(pg_ms):.2f} ms"
    if up_ms:
        cpu += f", the upstream {median(up_ms):.3f} ms"
    row.notes = [
        f"upstream {up.describe(url)}",
        "per-run rates " + ", ".join(fmt_rate(x) for x in rates),
        cpu,
        "refill after the first wave (seconds after its answers were due): "
        + "; ".join(_fmt_refill(x) for x in refills),
        "slow start off; timed from create_batch to the batch terminal",
    ]
    row.raw = {
        "rates": rates,
        "ideal": ideal,
        "cpu_ms_per_request": cpu_ms,
        "pg_cpu_ms_per_request": pg_ms,
        "upstream_cpu_ms_per_request": up_ms,
        "refill": refills,
        "claims": timelines,  # per run: (seconds from create_batch, rows) of each claim
        "peak_rss_mib": rss,
    }
    cmd = Row("P12", row.measure + " (`fusillade run`, default workers)", P12_TARGET)
    cmd_rate = median(cmd_rates)
    cmd.result = fmt_rate(cmd_rate)
    cmd.baseline = row.baseline
    cmd.ratio = f"{cmd_rate / ideal:.2f}"
    cmd.peak_rss = f"{fmt_mib(max(cmd_rss))} (every process)"
    cmd.met = cmd_rate / ideal >= 0.9 and max(cmd_rss) < 500
    cmd.notes = [
        "per-run rates " + ", ".join(fmt_rate(x) for x in cmd_rates),
        f"CPU per request: {median(cmd_cpu_ms):.2f} ms (the process and its workers)",
        "wall time of the whole process: start-up, validation, ingest, batch, writing "
        "the results; slow start off ([upstreams] slow_start = false)",
    ]
    cmd.raw = {"rates": cmd_rates, "cpu_ms_per_request": cmd_cpu_ms, "peak_rss_mib": cmd_rss}
    return [row, cmd]


def _fmt_refill(r: dict[str, Any]) -> str:
    def sec(x: float | None) -> str:
        return "never" if x is None else f"{x:.2f}"

    return (
        f"wave {r['first_wave']:,.0f}, next claim {sec(r['next_claim'])}, "
        f"90% {sec(r['refilled_90'])}"
    )
