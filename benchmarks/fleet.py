"""P15: daemons on one database (issue 16, item 5): how throughput, CPU per request and
claim latency change with 1, 2, 4 and 8 daemon processes sharing one PostgreSQL.

Per daemon count K, in a fresh database: one batch created with the library (the file is
not timed), K ``benchmarks.child fleet_daemon`` processes (the slots split among them as
``run --workers`` splits them, ``fusillade.server.workers.share_of``), timed from
``create_batch`` to the batch terminal (the parent polls it every 100 ms). Two variants:

- ``fast``: the zero-latency upstream, ``p15_requests`` requests, ``p1_slots`` slots: the
  daemons' Python CPU is the limit, so the figure that carries to other machines is the
  requests per CPU-second (daemons plus their PostgreSQL backends, from psutil).
- ``slow``: the ``p12_latency`` upstream, ``p15_slow_requests`` requests and
  ``p15_slow_slots`` slots, whose ideal (slots / latency) is well below what the CPU
  allows: what is left is the claim and write side.

Reported per K: requests a second and against one daemon; CPU ms per request (daemons,
their PostgreSQL backends) and requests per CPU-second; every ``claim`` call of every
daemon timed inside the daemon (pool checkout, statement, decoding: under a saturated
CPU it also includes waiting for the GIL), median and p95, and how many; the claim
statement alone, from a probe in this process (16 rows of the batch every 0.2 s on a
connection of its own, rolled back); transactions
committed in the database and WAL bytes per request (``pg_current_wal_lsn``: server-wide,
so anything else writing on the server meanwhile is counted too, and the load average
says how busy the machine was).
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any
from uuid import UUID, uuid4

import psycopg

from benchmarks.common import (
    READY_LINE,
    REPO_ROOT,
    RESULT_PREFIX,
    ChildFailed,
    Env,
    Row,
    child_command,
    fmt_rate,
    kill_and_reap,
    median,
)
from benchmarks.database import fresh_database, migrate
from benchmarks.upstream import Upstreams

TARGET = "(informative)"
READY_TIMEOUT = 60.0
PROBE_ROWS = 16
PROBE_INTERVAL = 0.2  # seconds between the probe's claims
STOP_TIMEOUT = 60.0


# Informative and 8 runs of the batch per run (4 to 5 minutes): once, whatever --runs says.
P15_RUNS = 1


def _part(limit: int, index: int, count: int) -> int:
    """Daemon ``index``'s part of ``limit`` (as ``fusillade.server.workers._part``)."""
    return limit // count + (1 if index < limit % count else 0)


def _cpu(pids: list[int]) -> dict[int, float]:
    """CPU seconds (user + system, every thread) so far of each of ``pids``."""
    import psutil

    out = {}
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            t = psutil.Process(pid).cpu_times()
            out[pid] = t.user + t.system
    return out


def _db_counters(url: str) -> tuple[int, int]:
    """(WAL position of the server in bytes, transactions committed in this database)."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT pg_current_wal_lsn() - '0/0'::pg_lsn,"
            " (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database())"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def _footprint(url: str) -> tuple[int, int]:
    """(connections open to this database but ours, bytes of the request tables with their
    indexes and TOAST: requests, request_templates, batch_state_counts)."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            "        AND pid <> pg_backend_pid()),"
            " pg_total_relation_size('requests') + pg_total_relation_size('request_templates')"
            " + pg_total_relation_size('batch_state_counts')"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


@dataclass
class _Daemon:
    proc: subprocess.Popen[bytes]
    out: IO[bytes]
    err: IO[bytes]

    def tail(self, lines: int = 10) -> str:
        self.err.seek(0)
        text = self.err.read().decode(errors="replace")
        return "\n".join(text.strip().splitlines()[-lines:])

    def result(self) -> dict[str, Any]:
        self.out.seek(0)
        found = None
        for line in self.out.read().decode(errors="replace").splitlines():
            if line.startswith(RESULT_PREFIX):
                found = json.loads(line[len(RESULT_PREFIX) :])
        if self.proc.returncode != 0 or found is None:
            raise ChildFailed(f"fleet_daemon exited with {self.proc.returncode}:\n{self.tail()}")
        assert isinstance(found, dict)
        return found


@contextlib.contextmanager
def _fleet(params: list[dict[str, Any]]) -> Iterator[list[_Daemon]]:
    """One ``fleet_daemon`` child per parameter set, each READY; killed if the block fails."""
    with contextlib.ExitStack() as stack:
        daemons: list[_Daemon] = []
        try:
            for p in params:
                out = stack.enter_context(tempfile.TemporaryFile())
                err = stack.enter_context(tempfile.TemporaryFile())
                proc = subprocess.Popen(
                    child_command("fleet_daemon", p),
                    stdin=subprocess.PIPE,
                    stdout=out,
                    stderr=err,
                    cwd=REPO_ROOT,
                )
                daemons.append(_Daemon(proc, out, err))
            _wait_ready(daemons)
            yield daemons
        except BaseException:
            for d in daemons:
                if d.proc.returncode is None:
                    kill_and_reap(d.proc)
            raise


def _wait_ready(daemons: list[_Daemon]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    for d in daemons:
        while True:
            d.out.seek(0)
            if READY_LINE.encode() in d.out.read():
                break
            if d.proc.poll() is not None or time.monotonic() > deadline:
                raise ChildFailed(f"fleet_daemon did not get ready:\n{d.tail()}")
            time.sleep(0.05)


def _stop(daemons: list[_Daemon]) -> list[dict[str, Any]]:
    """Close every daemon's standard input (a graceful stop); its RESULT and its peak RSS
    (MiB, from wait4)."""
    for d in daemons:
        assert d.proc.stdin is not None
        d.proc.stdin.close()
    results = []
    deadline = time.monotonic() + STOP_TIMEOUT
    for d in daemons:
        while True:
            pid, status, usage = os.wait4(d.proc.pid, os.WNOHANG)
            if pid:
                d.proc.returncode = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() > deadline:
                raise ChildFailed(f"fleet_daemon {d.proc.pid} did not stop:\n{d.tail()}")
            time.sleep(0.02)
        results.append({**d.result(), "rss_mib": usage.ru_maxrss / 1024})
    return results


class _Probe:
    """A claim of ``PROBE_ROWS`` rows of the batch every ``PROBE_INTERVAL`` s from a
    connection of its own, rolled back: the claim statement's duration on the database
    while the daemons run (round trip on loopback included), outside the daemons' GIL.
    Its rows are locked only while it runs (the daemons skip them meanwhile)."""

    def __init__(self, url: str, claim_sql: str) -> None:
        self.conn = psycopg.connect(url)
        self.claim_sql = claim_sql
        self.backend_pid = self.conn.info.backend_pid
        self.ms: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, batch_id: UUID) -> None:
        self._thread = threading.Thread(target=self._run, args=(batch_id,), daemon=True)
        self._thread.start()

    def _run(self, batch_id: UUID) -> None:
        from datetime import UTC, datetime

        from benchmarks.common import MODEL

        while not self._stop.wait(PROBE_INTERVAL):
            params = {
                "daemon_id": uuid4(),
                "now": datetime.now(UTC),
                "batch_ids": [batch_id],
                "models": [MODEL],
                "counts": [PROBE_ROWS],
            }
            start = time.perf_counter()
            self.conn.execute(self.claim_sql, params).fetchall()
            self.ms.append(1000 * (time.perf_counter() - start))
            self.conn.rollback()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        self.conn.close()


def measure(
    admin_url: str, upstream: str, n: int, slots: int, k: int, slow_start: bool, label: str
) -> dict[str, Any]:
    """One run: K daemons, one batch of ``n`` requests, timed to its end."""
    import trio

    import fusillade
    from benchmarks.child import _backend_cpu, templates
    from fusillade.store.postgres import PostgresRepository

    params = [
        {"upstream": upstream, "concurrency": _part(slots, i, k), "slow_start": slow_start}
        for i in range(k)
    ]
    with fresh_database(admin_url, f"p15_{label}_{k}") as db:
        migrate(db)

        async def main(repo: PostgresRepository) -> dict[str, Any]:
            async with fusillade.open(repository=repo, run_daemon=False) as engine:
                file = await engine.create_file(templates(n))
                probe = _Probe(db, repo.q.claim)
                with _fleet([{**p, "database_url": db} for p in params]) as daemons:
                    pids = [d.proc.pid for d in daemons]
                    cpu0, pg0 = _cpu(pids), _backend_cpu(db)
                    wal0, xact0 = _db_counters(db)
                    load0 = os.getloadavg()[0]
                    start = time.perf_counter()
                    batch = await engine.create_batch(file.id)
                    probe.start(batch.record.id)
                    try:
                        view = await engine.wait(batch.record.id, interval=0.1)
                    finally:
                        probe.stop()
                    end = time.perf_counter()
                    cpu1, pg1 = _cpu(pids), _backend_cpu(db)
                    # the probe's own backend is not the deployment's cost
                    pg1.pop(probe.backend_pid, None)
                    wal1, _ = _db_counters(db)
                    connections, stored = _footprint(db)
                    children = _stop(daemons)
                _, xact1 = _db_counters(db)
            return {
                "seconds": end - start,
                "start": start,
                "end": end,
                "completed": view.counts.completed,
                "daemon_cpu": sum(cpu1[p] - cpu0.get(p, 0.0) for p in cpu1),
                "pg_cpu": sum(t - pg0.get(p, 0.0) for p, t in pg1.items()),
                "wal_bytes": wal1 - wal0,
                "xacts": xact1 - xact0,
                "connections": connections,
                "stored_bytes": stored,
                "rss_mib": [c["rss_mib"] for c in children],
                "load": load0,
                "probe_ms": probe.ms,
                "children": children,
            }

        with PostgresRepository(db, max_size=2) as repo:
            r = trio.run(main, repo)
    children = r.pop("children")
    # perf_counter is CLOCK_MONOTONIC: the children's claim times compare with ours
    inside = [
        [(d, rows) for t, d, rows in c["claims"] if r["start"] <= t <= r["end"]] for c in children
    ]
    r["claim_ms"] = [1000 * d for claims in inside for d, _ in claims]
    r["claimed_rows"] = [rows for claims in inside for _, rows in claims]
    r["claimed_per_daemon"] = [sum(rows for _, rows in claims) for claims in inside]
    return r


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


def p15(env: Env, up: Upstreams) -> list[Row]:
    s = env.sizes
    slow_url = up.delayed_url(s.p12_latency)
    variants = [
        ("fast", up.fast, s.p15_requests, s.p1_slots, True, "zero-latency upstream"),
        (
            "slow",
            slow_url,
            s.p15_slow_requests,
            s.p15_slow_slots,
            False,
            f"{s.p12_latency:g} s upstream (ideal {s.p15_slow_slots / s.p12_latency:,.0f} req/s)",
        ),
    ]
    rows: list[Row] = []
    for label, url, n, slots, slow_start, what in variants:
        runs: dict[int, list[dict[str, Any]]] = {k: [] for k in s.p15_daemons}
        runs_here = min(env.runs, P15_RUNS)
        for i in range(runs_here):
            for k in s.p15_daemons:  # every K within each run: the machine's load is shared
                env.log(f"P15 {label} run {i + 1}/{runs_here}: {k} daemon(s), {n:,} requests")
                r = measure(env.admin_url, url, n, slots, k, slow_start, label)
                if r["completed"] != n:
                    raise ChildFailed(f"P15 {label} K={k}: completed {r['completed']} of {n}")
                runs[k].append(r)
        one = median([r["seconds"] for r in runs[s.p15_daemons[0]]])
        for k in s.p15_daemons:
            rows.append(_row(k, label, what, n, slots, runs[k], n / one, up.describe(url)))
    return rows


def _row(
    k: int,
    label: str,
    what: str,
    n: int,
    slots: int,
    runs: list[dict[str, Any]],
    first_rate: float,
    upstream: str,
) -> Row:
    rates = [n / r["seconds"] for r in runs]
    rate = median(rates)
    daemon_ms = median([1000 * r["daemon_cpu"] / n for r in runs])
    pg_ms = median([1000 * r["pg_cpu"] / n for r in runs])
    per_cpu_s = median([n / (r["daemon_cpu"] + r["pg_cpu"]) for r in runs])
    cores = median([(r["daemon_cpu"] + r["pg_cpu"]) / r["seconds"] for r in runs])
    claim_ms = [x for r in runs for x in r["claim_ms"]]
    probe_ms = [x for r in runs for x in r["probe_ms"]]
    claimed = [x for r in runs for x in r["claimed_rows"]]
    wal = median([r["wal_bytes"] / n for r in runs])
    xacts = median([r["xacts"] / n for r in runs])
    per_daemon = runs[len(runs) // 2]["claimed_per_daemon"]
    stored = median([r["stored_bytes"] / n for r in runs])
    connections = max(r["connections"] for r in runs)
    row = Row(
        "P15",
        f"{k} daemon(s) on one database, {label}: {n:,} requests, {slots:,} slots split, {what}",
        TARGET,
    )
    row.result = f"{fmt_rate(rate)}; {per_cpu_s:,.0f} req per CPU-second"
    row.baseline = f"1 daemon {fmt_rate(first_rate)}"
    row.ratio = f"{rate / first_rate:.2f}"
    row.peak_rss = f"{max(x for r in runs for x in r['rss_mib']):,.0f} MiB per daemon"
    row.notes = [
        f"CPU per request: daemons {daemon_ms:.2f} ms, their PostgreSQL backends {pg_ms:.2f} ms;"
        f" {cores:.2f} cores busy",
        f"claim call (in the daemons): median {_pct(claim_ms, 0.5):.1f} ms,"
        f" p95 {_pct(claim_ms, 0.95):.1f} ms, {len(claim_ms) // len(runs):,} claims a run,"
        f" {statistics.fmean(claimed) if claimed else 0:.1f} rows each",
        f"claim statement ({PROBE_ROWS} rows, rolled back, from a connection of its own every"
        f" {PROBE_INTERVAL:g} s): median {_pct(probe_ms, 0.5):.1f} ms,"
        f" p95 {_pct(probe_ms, 0.95):.1f} ms, {len(probe_ms) // len(runs):,} a run",
        f"per request: {xacts:.2f} transactions committed, {wal:,.0f} WAL bytes (server-wide),"
        f" {stored:,.0f} bytes stored (request tables with indexes)",
        f"{connections} connections to the database at the end (daemons' pools, LISTEN, poller)",
        "claimed per daemon " + ", ".join(f"{x:,}" for x in per_daemon),
        "per-run rates " + ", ".join(fmt_rate(x) for x in rates),
        "load average (1 min) at start " + ", ".join(f"{r['load']:.2f}" for r in runs),
        f"upstream {upstream}",
    ]
    row.raw = {
        "daemons": k,
        "variant": label,
        "rates": rates,
        "runs": [
            {key: v for key, v in r.items() if key not in ("claim_ms", "claimed_rows", "probe_ms")}
            for r in runs
        ],
        "claim_ms_median": _pct(claim_ms, 0.5),
        "claim_ms_p95": _pct(claim_ms, 0.95),
        "rows_per_claim": statistics.fmean(claimed) if claimed else 0.0,
        "probe_ms_median": _pct(probe_ms, 0.5),
        "probe_ms_p95": _pct(probe_ms, 0.95),
    }
    return row
