"""P14: PostgreSQL's work per recorded request (issue 16, item 3).

``p14_requests`` requests through the library (the daemon in a child process, as P1's
library run) against the zero-latency upstream. Around ``create_batch`` .. batch terminal
the child reads, from PostgreSQL:

- WAL: ``pg_current_wal_lsn()`` before and after (bytes), and ``pg_stat_wal`` (records,
  full-page images), the "after" once the daemon has stopped (its shutdown included).
  Both are the whole server's: another database busy on the same server is counted too
  (run it alone). A ``CHECKPOINT`` just before (when allowed) makes every first write of
  a page in the run a full-page image, as a run long after a checkpoint would have, so
  runs compare;
- CPU: user + system time of this database's backends (psutil), as P12;
- the ``requests`` table's tuples inserted, updated and HOT-updated
  (``pg_stat_user_tables``, read once the daemon's connections have closed and reported),
  and its heap, TOAST and index sizes afterwards.

Every figure is divided by the requests recorded. Informative: no target (issue 16 asks
for the measure and for less of it).
"""

from __future__ import annotations

import time
from typing import Any

from benchmarks.common import ChildFailed, Env, Row, median, run_child
from benchmarks.database import fresh_database
from benchmarks.upstream import Upstreams

P14_TARGET = "(informative)"

WAL_NOW = "SELECT pg_current_wal_lsn()::text"
WAL_STATS = "SELECT wal_records, wal_fpi, wal_bytes FROM pg_stat_wal"
TABLE_STATS = """
SELECT coalesce(n_tup_ins, 0), coalesce(n_tup_upd, 0), coalesce(n_tup_hot_upd, 0)
FROM pg_stat_user_tables WHERE relid = 'requests'::regclass
"""
SIZES = """
SELECT pg_relation_size('requests'),
       coalesce(pg_total_relation_size(nullif(reltoastrelid, 0)), 0),
       pg_indexes_size('requests')
FROM pg_class WHERE oid = 'requests'::regclass
"""
INDEX_SIZES = """
SELECT c.relname, pg_relation_size(c.oid)
FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
WHERE i.indrelid = 'requests'::regclass
ORDER BY c.relname
"""


def child(params: dict[str, Any]) -> dict[str, Any]:
    """The measured run (``python -m benchmarks.child pgcost JSON``)."""
    import resource

    import psycopg
    import trio

    import fusillade
    from benchmarks.child import _backend_cpu, daemon_config, templates

    url = params["database_url"]

    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    def wal(conn: psycopg.Connection[Any]) -> tuple[str, tuple[Any, ...]]:
        lsn = conn.execute(WAL_NOW).fetchone()
        stats = conn.execute(WAL_STATS).fetchone()
        assert lsn is not None
        assert stats is not None
        return lsn[0], tuple(stats)

    async def main(conn: psycopg.Connection[Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with fusillade.open(url, daemon_config(params)) as engine:
            file = await engine.create_file(templates(params["n"]))
            try:
                await trio.to_thread.run_sync(conn.execute, "CHECKPOINT")
                out["checkpoint"] = True
            except psycopg.Error:  # not a superuser: FPIs then depend on the last checkpoint
                out["checkpoint"] = False
            backends = await trio.to_thread.run_sync(_backend_cpu, url)
            lsn0, wal0 = wal(conn)
            cpu0 = cpu()
            start = time.perf_counter()
            batch = await engine.create_batch(file.id)
            view = await engine.wait(batch.record.id, interval=0.1)
            out["seconds"] = time.perf_counter() - start
            out["cpu_seconds"] = cpu() - cpu0
            after = await trio.to_thread.run_sync(_backend_cpu, url)
        # after the daemon's connections closed: each backend reports its WAL statistics
        # when it exits (the LSN would not need it, pg_stat_wal does)
        out["table"] = await trio.to_thread.run_sync(_settled_table_stats, conn)
        lsn1, wal1 = wal(conn)
        out["pg_cpu_seconds"] = (
            sum(t - backends.get(pid, 0.0) for pid, t in after.items()) if after else None
        )
        row = conn.execute("SELECT pg_wal_lsn_diff(%s, %s)", (lsn1, lsn0)).fetchone()
        assert row is not None
        out["wal_bytes"] = float(row[0])
        out["wal_range"] = [lsn0, lsn1]  # for pg_waldump --stats on the server
        out["wal_records"] = wal1[0] - wal0[0]
        out["wal_fpi"] = wal1[1] - wal0[1]
        out["completed"] = view.counts.completed
        return out

    with psycopg.connect(url, autocommit=True) as conn:
        out = trio.run(main, conn)
        out["ins"], out["upd"], out["hot"] = out.pop("table")
        sizes = conn.execute(SIZES).fetchone()
        assert sizes is not None
        out["heap_bytes"], out["toast_bytes"], out["index_bytes"] = sizes
        out["indexes"] = dict(conn.execute(INDEX_SIZES).fetchall())
    return out


def _settled_table_stats(conn: Any) -> tuple[int, int, int]:
    """requests' (inserted, updated, HOT-updated) tuples once the closed backends' counts
    have reached the statistics (a backend reports them when it exits): polled until two
    reads a moment apart agree, for at most 5 s."""
    last: tuple[int, int, int] | None = None
    deadline = time.monotonic() + 5.0
    while True:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute(TABLE_STATS).fetchone()
        now = (int(row[0]), int(row[1]), int(row[2])) if row else (0, 0, 0)
        if now == last or time.monotonic() > deadline:
            return now
        last = now
        time.sleep(0.2)  # the next report, not a wait for an event we could observe


def p14(env: Env, up: Upstreams) -> list[Row]:
    s = env.sizes
    n = s.p14_requests
    row = Row("P14", f"PostgreSQL work per recorded request: {n:,} requests", P14_TARGET)
    runs: list[dict[str, Any]] = []
    for i in range(env.runs):
        env.log(f"P14 run {i + 1}/{env.runs}: fusillade library, {s.p1_slots} slots")
        with fresh_database(env.admin_url, f"p14_{i}") as db:
            r = run_child(
                "pgcost",
                {
                    "database_url": db,
                    "upstream": up.fast,
                    "n": n,
                    "concurrency": s.p1_slots,
                    "per_client": s.per_client,
                },
            ).result
        if r["completed"] != n:
            raise ChildFailed(f"fusillade completed {r['completed']} of {n}")
        runs.append(r)

    def per(key: str) -> float:
        return median([float(r[key]) / n for r in runs])

    wal = per("wal_bytes")
    row.result = f"{wal:,.0f} B of WAL per request"
    pg = [1000 * r["pg_cpu_seconds"] / n for r in runs if r["pg_cpu_seconds"] is not None]
    cpu = f"PostgreSQL backends {median(pg):.3f} ms CPU per request" if pg else "no psutil"
    upd, hot = per("upd"), per("hot")
    row.notes = [
        f"{cpu}; fusillade (every thread) {1000 * per('cpu_seconds'):.3f} ms",
        f"WAL records {per('wal_records'):.1f}, full-page images {per('wal_fpi'):.2f} per request"
        " (the whole server's WAL, after a CHECKPOINT)",
        f"requests: {per('ins'):.2f} inserted, {upd:.2f} updated ({hot:.2f} HOT) per request",
        f"requests' size per request: heap {per('heap_bytes'):,.0f} B, TOAST "
        f"{per('toast_bytes'):,.0f} B, indexes {per('index_bytes'):,.0f} B",
        "per-run WAL bytes per request "
        + ", ".join(f"{r['wal_bytes'] / n:,.0f}" for r in runs)
        + "; rates "
        + ", ".join(f"{n / r['seconds']:,.0f}" for r in runs)
        + " req/s",
    ]
    row.raw = {"n": n, "runs": runs}
    return [row]
