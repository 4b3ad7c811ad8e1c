"""P13: retention (issue 15, item 3): the database stays the same size over cycles of
finished batches when the retention is one cycle, and claims stay fast while a purge runs.

Each cycle seeds an input file of ``p13_requests`` templates (bulk SQL), creates its batch
with the library, marks every request completed (bulk SQL, as P5 does: the upstream is not
the point, the rows are), freezes the batch (a read) and deletes its input file, as a user
would once the batch is done. Then the repository's ``purge`` runs until done with a
retention of one cycle: the previous cycle's requests go, and the input templates of the
cycles before (blanked first, deleted with their batch's requests). After each cycle a plain
``VACUUM`` (what autovacuum does; never ``VACUUM FULL``) lets the next cycle reuse the space;
the size of the database (``pg_database_size``) and of ``requests`` and
``request_templates`` (``pg_total_relation_size``) is recorded.

Beside the cycles a live batch of pending requests is claimed from, ``P13_SLOTS`` at a time
(then released, untimed): ``P13_CLAIMS`` claims before each purge (idle) and claims all the
while the purge runs (a thread of its own, on its own connection pool), so the two
latencies compare claims without and with a purge, at the same table size.
"""

from __future__ import annotations

import statistics
import threading
import time
from typing import Any
from uuid import UUID, uuid4

import psycopg

from benchmarks.common import CANNED_COMPLETION, MODEL, Env, Row
from benchmarks.database import complete_all, fresh_database, migrate, now, seed_batch

P13_SLOTS = 64
P13_CLAIMS = 200
P13_SIZE_TARGET = "flat from cycle 3 (within 10%)"
P13_CLAIM_TARGET = "claim median < 20 ms (P7's target) while a purge runs"


def p13(env: Env, up: object = None) -> list[Row]:
    with fresh_database(env.admin_url, "p13") as url:
        migrate(url)
        return _rows(_run(url, env.sizes.p13_cycles, env.sizes.p13_requests, env.log))


def _sizes(url: str) -> dict[str, int]:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM")
        row = conn.execute(
            "SELECT pg_database_size(current_database()), pg_total_relation_size('requests'),"
            " pg_total_relation_size('request_templates')"
        ).fetchone()
    assert row is not None
    return {"database": row[0], "requests": row[1], "templates": row[2]}


def _claims(url: str, live: UUID, stop: threading.Event, runs: int | None) -> list[float]:
    """Claim ``P13_SLOTS`` of the live batch (timed) and release them (untimed), ``runs``
    times or until ``stop``; the claim times in ms."""
    from fusillade.store.interface import DaemonInfo
    from fusillade.store.postgres import PostgresRepository

    daemon = uuid4()
    out: list[float] = []
    with PostgresRepository(url, max_size=2) as repo:
        repo.register_daemon(DaemonInfo(daemon, "bench", 0, "bench"), now=now())
        while not stop.is_set() and (runs is None or len(out) < runs):
            start = time.perf_counter()
            claimed = repo.claim(daemon, [(live, MODEL, P13_SLOTS)], now=now())
            out.append((time.perf_counter() - start) * 1000)
            repo.release(daemon, now=now(), request_ids=[c.id for c in claimed])
    return out


def _claim_into(out: list[float], url: str, live: UUID, stop: threading.Event) -> None:
    out.extend(_claims(url, live, stop, None))


def _run(url: str, cycles: int, requests: int, log: Any) -> dict[str, Any]:
    from fusillade.store.interface import PurgeStats
    from fusillade.store.postgres import PostgresRepository

    live = seed_batch(url, max(10 * P13_SLOTS, requests // 5))
    body = CANNED_COMPLETION
    sizes: list[dict[str, int]] = []
    idle: list[float] = []
    busy: list[float] = []
    purge_seconds: list[float] = []
    starts: list[Any] = []
    with PostgresRepository(url, statement_timeout_ms=3_600_000) as repo:
        for cycle in range(1, cycles + 1):
            starts.append(now())
            batch = seed_batch(url, requests)
            complete_all(url, batch, body)
            view = repo.get_batch("default", batch, now=now())  # freezes it
            repo.delete_file("default", view.record.input_file_id, now=now())
            idle += _claims(url, live, threading.Event(), P13_CLAIMS)
            stop = threading.Event()
            timed: list[float] = []
            claimer = threading.Thread(target=_claim_into, args=(timed, url, live, stop))
            claimer.start()
            began = time.perf_counter()
            total = PurgeStats()
            while True:
                step = repo.purge(now=now(), finished_before=starts[-1], stopped_before=starts[0])
                total += step
                if not step.more:
                    break
            purge_seconds.append(time.perf_counter() - began)
            stop.set()
            claimer.join()
            busy += timed
            sizes.append(_sizes(url))
            log(
                f"P13: cycle {cycle}: purged {total.requests:,} requests and "
                f"{total.templates:,} templates in {purge_seconds[-1]:.1f} s "
                f"({len(timed)} claims meanwhile); database "
                f"{sizes[-1]['database'] / 2**20:.0f} MiB"
            )
    return {
        "cycles": cycles,
        "requests": requests,
        "sizes": sizes,
        "idle_ms": idle,
        "busy_ms": busy,
        "purge_seconds": purge_seconds,
    }


def _pct(values: list[float], q: float) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def _rows(m: dict[str, Any]) -> list[Row]:
    mib = [s["database"] / 2**20 for s in m["sizes"]]
    # cycle 1 holds one cycle, cycle 2 two (the retained one and the new one): from
    # cycle 3 the purge keeps two and VACUUM lets each cycle reuse the space freed
    later = mib[2:] if len(mib) > 2 else mib
    spread = (max(later) - min(later)) / min(later) if later else 0.0
    size = Row(
        "P13",
        f"database size over {m['cycles']} cycles of {m['requests']:,} requests, "
        "retention of one cycle",
        P13_SIZE_TARGET,
    )
    third = mib[2] if len(mib) > 2 else mib[-1]
    size.result = f"{third:.0f} MiB after cycle 3, {mib[-1]:.0f} MiB after cycle {len(mib)}"
    size.met = spread <= 0.10
    size.notes = [
        "per cycle (MiB): " + ", ".join(f"{v:.0f}" for v in mib),
        "requests (MiB): " + ", ".join(f"{s['requests'] / 2**20:.0f}" for s in m["sizes"]),
        "request_templates (MiB): "
        + ", ".join(f"{s['templates'] / 2**20:.0f}" for s in m["sizes"]),
        f"spread from cycle 3: {spread:.1%}; plain VACUUM after each cycle",
    ]
    size.raw = {"sizes": m["sizes"]}
    idle, busy = m["idle_ms"], m["busy_ms"]
    claim = Row("P13", f"claim ({P13_SLOTS} slots) while a purge runs", P13_CLAIM_TARGET)
    claim.result = (
        f"p50 {_pct(busy, 50):.1f} ms, p99 {_pct(busy, 99):.1f} ms "
        f"(no purge: p50 {_pct(idle, 50):.1f} ms, p99 {_pct(idle, 99):.1f} ms)"
    )
    claim.met = statistics.median(busy) < 20 if busy else False
    claim.notes = [
        f"{len(busy)} claims during the purges, {len(idle)} without",
        "purge per cycle (s): " + ", ".join(f"{s:.1f}" for s in m["purge_seconds"]),
    ]
    claim.raw = {"idle_ms": idle, "busy_ms": busy, "purge_seconds": m["purge_seconds"]}
    return [size, claim]
