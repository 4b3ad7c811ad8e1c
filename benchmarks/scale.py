"""P7: the claim and status queries with millions of finished requests in the table.

Also a script of its own::

    python -m benchmarks.scale --rows 20000000 [--database-url URL] [--results-dir DIR] [--keep]

Loads, in bulk SQL (``generate_series``) consistent with the migrations, the requests'
indexes dropped during the load of the finished rows and built again after it:
``rows`` finished requests in frozen batches of up to 50,000 (2% failed with a 500, the
rest completed with a canned body; input files shared by ten batches each), plus one live
batch of the same size, 40% completed and 60% pending. Then VACUUM ANALYZE and times,
through the repository (pool checkout and row decoding included, as the daemon and the
server pay them): ``claim`` of 256 slots (fewer at tiny scales) for the live batch's
model, and ``get_batch`` of a frozen and of the live batch (which counts its requests),
medians of many calls. ``EXPLAIN (ANALYZE, BUFFERS)`` of each statement is saved to
``explain-*.txt`` in the results directory (the claim's inside a rolled-back transaction).

Then, in the same database, rows the claim must not pay for (P7's second part):
``rows / 5`` (at most 1,000,000) pending rows of a cancelled batch that no sweep has
reached yet, and as many pending rows backing off (attempted once, due in an hour) in a
live batch, both with earlier deadlines than the live batch, so they sit at the front of
the claim order.
VACUUM ANALYZE again, and the claim is timed and explained once more.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import psycopg

from benchmarks.common import CANNED_COMPLETION, MODEL, REPO_ROOT, Env, Row, median
from benchmarks.database import admin_url, fresh_database, migrate, now, seed_file
from fusillade.ids import uuid7

CLAIM_RUNS = 30
STATUS_RUNS = 200
FAILED_EVERY = 50  # one request in 50 failed with a 500
ERROR_BODY = '{"error":{"message":"upstream failure","type":"server_error"}}'

INSERT_RESULT_FILE = """
INSERT INTO files (id, owner, filename, purpose, batch_id, created_at)
VALUES (%s, 'default', %s, %s, %s, %s)
"""
INSERT_BATCH = """
INSERT INTO batches (id, owner, input_file_id, output_file_id, error_file_id, endpoint,
    completion_window, created_at, expires_at, total, models, frozen_completed, frozen_failed,
    frozen_canceled, frozen_input_tokens, frozen_output_tokens, last_finished_at)
VALUES (%(id)s, 'default', %(input)s, %(output)s, %(error)s, '/v1/chat/completions', '24h',
    %(created)s, %(expires)s, %(total)s, ARRAY['bench-model'], %(completed)s, %(failed)s,
    %(canceled)s, %(input_tokens)s, %(output_tokens)s, %(last)s)
"""
# Every request of the given batches, finished (g: the line number).
INSERT_FINISHED = """
INSERT INTO requests (batch_id, file_id, line_number, model, batch_expires_at, state, attempts,
    not_before, daemon_id, claimed_at, started_at, finished_at, response_status, response_body,
    failure_reason, failure_message, input_tokens, output_tokens)
SELECT b.id, b.file_id, g, 'bench-model', b.expires_at,
       CASE WHEN g %% %(every)s = 0 THEN 'failed' ELSE 'completed' END, 1,
       b.created_at, %(daemon)s, b.created_at + g * interval '1 ms',
       b.created_at + g * interval '1 ms', b.created_at + g * interval '1 ms' + interval '300 ms',
       CASE WHEN g %% %(every)s = 0 THEN 500 ELSE 200 END,
       CASE WHEN g %% %(every)s = 0 THEN %(error_body)s ELSE %(body)s END,
       CASE WHEN g %% %(every)s = 0 THEN 'http_status' END,
       CASE WHEN g %% %(every)s = 0 THEN 'upstream answered 500' END,
       CASE WHEN g %% %(every)s = 0 THEN NULL ELSE 12 END,
       CASE WHEN g %% %(every)s = 0 THEN NULL ELSE 9 END
FROM unnest(%(ids)s::uuid[], %(files)s::uuid[], %(created)s::timestamptz[],
            %(expires)s::timestamptz[]) AS b (id, file_id, created_at, expires_at)
CROSS JOIN generate_series(1, %(size)s::int) AS g
WHERE g <= %(upto)s
"""
INSERT_PENDING = """
INSERT INTO requests (batch_id, file_id, line_number, model, batch_expires_at, not_before)
SELECT %(id)s, %(file)s, g, 'bench-model', %(expires)s, %(created)s
FROM generate_series(%(first)s::int, %(last)s::int) AS g
"""
# Pending again after a failed attempt, waiting for its retry's not_before.
INSERT_BACKING_OFF = """
INSERT INTO requests (batch_id, file_id, line_number, model, batch_expires_at, attempts,
    not_before, failure_reason, failure_message)
SELECT %(id)s, %(file)s, g, 'bench-model', %(expires)s, 1, %(not_before)s, 'http_status',
       'upstream answered 429'
FROM generate_series(1, %(n)s::int) AS g
"""


# The requests table's indexes (the primary key's too) as the migrations made them, for
# dropping them before the bulk load and building them again after it: building an index
# over the loaded rows takes a sort, while keeping 20,000,000 rows' entries in every index
# row by row touches index pages all over (random ids before migration 0014; several
# indexes lead with batch ids of batches written side by side), beyond the cache.
INDEX_DEFS = """
SELECT c.relname, pg_get_indexdef(i.indexrelid), con.conname
FROM pg_index i
JOIN pg_class c ON c.oid = i.indexrelid
LEFT JOIN pg_constraint con ON con.conindid = i.indexrelid AND con.conrelid = i.indrelid
WHERE i.indrelid = 'requests'::regclass
ORDER BY c.relname
"""
UNCLAIMABLE_MAX = 1_000_000  # P7's second part stays at its size of the 5,000,000 run


# The requests table's foreign keys: checked row by row on insert (a trigger per row),
# once for the whole table when added again after the load.
FOREIGN_KEYS = """
SELECT conname, pg_get_constraintdef(oid)
FROM pg_constraint
WHERE conrelid = 'requests'::regclass AND contype = 'f'
ORDER BY conname
"""


def _drop_request_indexes(conn: psycopg.Connection[Any]) -> list[tuple[str, str, str | None]]:
    """Drop the requests table's indexes and foreign keys; return what builds them again.
    Autovacuum leaves the table alone until they are back: the load ends with a VACUUM of
    its own, and an autovacuum of a table growing by millions of rows only competes."""
    conn.execute("ALTER TABLE requests SET (autovacuum_enabled = false)")
    fks = [(str(a), str(b)) for a, b in conn.execute(FOREIGN_KEYS).fetchall()]
    for name, _ in fks:
        conn.execute(f'ALTER TABLE requests DROP CONSTRAINT "{name}"'.encode())
    defs = [(str(a), str(b), c) for a, b, c in conn.execute(INDEX_DEFS).fetchall()]
    for name, _, constraint in defs:
        if constraint:
            conn.execute(f'ALTER TABLE requests DROP CONSTRAINT "{constraint}"'.encode())
        else:
            conn.execute(f'DROP INDEX "{name}"'.encode())
    conn.commit()
    return defs + [
        (name, f'ALTER TABLE requests ADD CONSTRAINT "{name}" {definition}', "foreign key")
        for name, definition in fks
    ]


def _build_request_indexes(
    conn: psycopg.Connection[Any], defs: list[tuple[str, str, str | None]], log: Any
) -> None:
    conn.execute("SET maintenance_work_mem = '1GB'")
    for name, definition, constraint in defs:
        started = time.perf_counter()
        conn.execute(definition.encode())
        if constraint and constraint != "foreign key":
            # the primary key: the constraint takes over the index just built
            conn.execute(
                f'ALTER TABLE requests ADD CONSTRAINT "{constraint}" PRIMARY KEY'
                f' USING INDEX "{name}"'.encode()
            )
        conn.commit()
        log(f"P7 load: built {name} in {time.perf_counter() - started:.0f} s")
    conn.execute("ALTER TABLE requests RESET (autovacuum_enabled)")
    conn.commit()


def _batch_size(rows: int) -> int:
    return min(50_000, max(100, rows // 20))


def _insert_batch(
    cur: psycopg.Cursor[Any], file_id: UUID, created: Any, size: int, *, frozen: bool
) -> tuple[UUID, Any]:
    batch_id, output_id, error_id = uuid7(), uuid7(), uuid7()
    for fid, purpose in ((output_id, "batch_output"), (error_id, "batch_error")):
        cur.execute(INSERT_RESULT_FILE, (fid, f"{fid.hex}.jsonl", purpose, batch_id, created))
    failed = size // FAILED_EVERY if frozen else None
    completed = size - failed if failed is not None else None
    expires = created + timedelta(hours=24)
    cur.execute(
        INSERT_BATCH,
        {
            "id": batch_id, "input": file_id, "output": output_id, "error": error_id,
            "created": created, "expires": expires, "total": size,
            "completed": completed, "failed": failed, "canceled": 0 if frozen else None,
            "input_tokens": 12 * completed if completed is not None else None,
            "output_tokens": 9 * completed if completed is not None else None,
            "last": created + timedelta(hours=1) if frozen else None,
        },
    )  # fmt: skip
    return batch_id, expires


def load(url: str, rows: int, log: Any = print) -> dict[str, Any]:
    """Load ``rows`` finished requests and one live batch; return their ids and sizes."""
    size = _batch_size(rows)
    batches = max(1, rows // size)
    started = time.perf_counter()
    with psycopg.connect(url) as conn:
        files = [seed_file(conn, size) for _ in range(min(10, batches))]
        live_file = seed_file(conn, size)
        t0 = now() - timedelta(days=30)
        frozen: list[tuple[UUID, UUID, Any, Any]] = []
        with conn.cursor() as cur:
            for j in range(batches):
                created = t0 + timedelta(minutes=5 * j)
                bid, expires = _insert_batch(cur, files[j % len(files)], created, size, frozen=True)
                frozen.append((bid, files[j % len(files)], created, expires))
        conn.commit()
        defs = _drop_request_indexes(conn)
        chunk = max(1, 500_000 // size)
        for k in range(0, batches, chunk):
            part = frozen[k : k + chunk]
            conn.execute(
                INSERT_FINISHED,
                {
                    "every": FAILED_EVERY, "daemon": uuid4(), "error_body": ERROR_BODY,
                    "body": CANNED_COMPLETION, "size": size, "upto": size,
                    "ids": [p[0] for p in part], "files": [p[1] for p in part],
                    "created": [p[2] for p in part], "expires": [p[3] for p in part],
                },
            )  # fmt: skip
            conn.commit()
            log(f"P7 load: {min(batches, k + chunk) * size:,} of {batches * size:,} finished")
        _build_request_indexes(conn, defs, log)
        created = now() - timedelta(minutes=1)
        with conn.cursor() as cur:
            live, expires = _insert_batch(cur, live_file, created, size, frozen=False)
        done = int(size * 0.4)
        conn.execute(
            INSERT_FINISHED,
            {
                "every": FAILED_EVERY, "daemon": uuid4(), "error_body": ERROR_BODY,
                "body": CANNED_COMPLETION, "size": size, "upto": done,
                "ids": [live], "files": [live_file], "created": [created], "expires": [expires],
            },
        )  # fmt: skip
        conn.execute(
            INSERT_PENDING,
            {"id": live, "file": live_file, "expires": expires, "created": created,
             "first": done + 1, "last": size},
        )  # fmt: skip
        conn.commit()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE)")
    return {
        "finished": batches * size, "batch_size": size, "pending": size - done,
        "frozen_batch": frozen[len(frozen) // 2][0], "live_batch": live, "live_file": live_file,
        "load_seconds": time.perf_counter() - started,
    }  # fmt: skip


def load_unclaimable(url: str, seeded: dict[str, Any], n: int) -> float:
    """Add ``n`` unswept cancelled rows and ``n`` rows backing off, ahead of the live batch.

    Both batches are older than the live one (earlier deadlines), so their rows come first
    in the claim's order; the cancelled batch is stamped, and no sweep runs. The rows need
    no templates of their own: no claim may reach them. Returns the seconds it took.
    """
    started = time.perf_counter()
    file_id = seeded["live_file"]
    with psycopg.connect(url) as conn:
        t = now()
        with conn.cursor() as cur:
            cancelled, c_expires = _insert_batch(
                cur, file_id, t - timedelta(hours=2), n, frozen=False
            )
            cur.execute(
                "UPDATE batches SET cancelling_at = %s WHERE id = %s",
                (t - timedelta(minutes=1), cancelled),
            )
            waiting, w_expires = _insert_batch(
                cur, file_id, t - timedelta(hours=1), n, frozen=False
            )
        conn.execute(
            INSERT_PENDING,
            {"id": cancelled, "file": file_id, "expires": c_expires,
             "created": t - timedelta(hours=2), "first": 1, "last": n},
        )  # fmt: skip
        conn.commit()
        conn.execute(
            INSERT_BACKING_OFF,
            {"id": waiting, "file": file_id, "expires": w_expires,
             "not_before": t + timedelta(hours=1), "n": n},
        )  # fmt: skip
        conn.commit()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE) requests")
        conn.execute("VACUUM (ANALYZE) batches")
    return time.perf_counter() - started


def _timed(fn: Any, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000)
    return out


def _explain(url: str, sql: str, params: dict[str, Any]) -> str:
    with psycopg.connect(url) as conn, psycopg.ClientCursor(conn) as cur:
        cur.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, params)
        text = "\n".join(str(r[0]) for r in cur.fetchall())
        conn.rollback()  # the claim is an UPDATE: leave the rows as they were
    return text


def _indexes(plan: str) -> str:
    names = sorted(set(re.findall(r"Index (?:Only )?Scan (?:Backward )?using (\w+)", plan)))
    return ", ".join(names) if names else "none (sequential scan)"


def _slots(seeded: dict[str, Any]) -> int:
    """256, or fewer at tiny scales: the two claim measures take ``CLAIM_RUNS`` claims each
    (plus one explained and rolled back) from the live batch's pending rows."""
    return max(1, min(256, int(seeded["pending"]) // (2 * CLAIM_RUNS + 2)))


def measure(url: str, seeded: dict[str, Any], results_dir: Path) -> dict[str, Any]:
    from fusillade.store.postgres import PostgresRepository

    results_dir.mkdir(parents=True, exist_ok=True)
    slots = _slots(seeded)
    daemon = uuid4()
    frozen, live = seeded["frozen_batch"], seeded["live_batch"]
    out: dict[str, Any] = {"slots": slots}
    with PostgresRepository(url) as repo:
        q = repo.q
        explain = {
            "claim": (q.claim, {"daemon_id": daemon, "now": now(), "batch_ids": [live],
                                "models": [MODEL], "counts": [slots]}),
            "status-frozen": (q.get_batch, {"id": frozen, "owner": "default"}),
            "status-live": (q.get_batch, {"id": live, "owner": "default"}),
            "status-live-counts": (q.count_batch_requests, {"batch_ids": [live]}),
            # run --ordered: a page from the middle of a finished batch, in line order
            "results-by-line": (q.stream_by_line, {"batch_id": frozen, "after_line": 1000,
                                                   "limit": 5000}),
        }  # fmt: skip
        for name, (sql, params) in explain.items():
            plan = _explain(url, sql, params)
            (results_dir / f"explain-{name}.txt").write_text(
                f"-- {name}, {seeded['finished']:,} finished requests\n{plan}\n"
            )
            out[f"indexes_{name}"] = _indexes(plan)
            found = re.search(r"Execution Time: ([\d.]+) ms", plan)
            out[f"sql_ms_{name}"] = float(found.group(1)) if found else None
        repo.get_batch("default", live, now=now())  # warm the pool
        allotted = [(live, MODEL, slots)]
        out["claim_ms"] = _timed(lambda: repo.claim(daemon, allotted, now=now()), CLAIM_RUNS)
        out["frozen_ms"] = _timed(lambda: repo.get_batch("default", frozen, now=now()), STATUS_RUNS)
        out["live_ms"] = _timed(lambda: repo.get_batch("default", live, now=now()), STATUS_RUNS)
    return out


def measure_unclaimable(url: str, seeded: dict[str, Any], results_dir: Path) -> dict[str, Any]:
    """The claim again, once ``load_unclaimable`` has put its rows in front."""
    from fusillade.store.postgres import PostgresRepository

    slots = _slots(seeded)
    daemon = uuid4()
    out: dict[str, Any] = {"slots": slots}
    with PostgresRepository(url) as repo:
        # as the daemon allots: every claimable batch (the one backing off and the live
        # one; the cancelled one is not claimable) asked for all the slots
        batches = [b.id for b in repo.claimable_batches(now=now())]
        allotted = [(b, MODEL, slots) for b in batches]
        params = {"daemon_id": daemon, "now": now(), "batch_ids": batches,
                  "models": [MODEL] * len(batches), "counts": [slots] * len(batches)}  # fmt: skip
        plan = _explain(url, repo.q.claim, params)
        n = seeded["unclaimable"]
        (results_dir / "explain-claim-unclaimable.txt").write_text(
            f"-- claim, {seeded['finished']:,} finished requests, {n:,} unswept cancelled"
            f" and {n:,} backing off\n{plan}\n"
        )
        out["indexes"] = _indexes(plan)
        found = re.search(r"Execution Time: ([\d.]+) ms", plan)
        out["sql_ms"] = float(found.group(1)) if found else None
        claimed = repo.claim(daemon, allotted, now=now())  # warms the pool
        out["claimed_from"] = sorted({str(c.batch_id) for c in claimed})
        out["claim_ms"] = _timed(lambda: repo.claim(daemon, allotted, now=now()), CLAIM_RUNS)
    return out


def p7(env: Env, up: object = None, *, results_dir: Path | None = None) -> list[Row]:
    rows = env.sizes.p7_rows
    results = results_dir or env.results_dir
    with fresh_database(env.admin_url, "p7") as url:
        migrate(url)
        return _run(url, rows, results, env.log)


def _run(url: str, rows: int, results: Path, log: Any) -> list[Row]:
    log(f"P7: loading {rows:,} finished requests (bulk SQL)")
    seeded = load(url, rows, log)
    log(f"P7: loaded in {seeded['load_seconds']:.0f} s; timing claim and status")
    m = measure(url, seeded, results)
    seeded["unclaimable"] = unclaimable = max(1, min(rows // 5, UNCLAIMABLE_MAX))
    log(f"P7: adding {unclaimable:,} unswept cancelled and {unclaimable:,} backing off")
    seeded["unclaimable_load_seconds"] = load_unclaimable(url, seeded, unclaimable)
    log(f"P7: added in {seeded['unclaimable_load_seconds']:.0f} s; timing the claim")
    u = measure_unclaimable(url, seeded, results)
    return _rows(seeded, m, results, u)


def _rows(seeded: dict[str, Any], m: dict[str, Any], results: Path, u: dict[str, Any]) -> list[Row]:
    n = f"{seeded['finished']:,} finished requests"
    live = f"live batch of {seeded['batch_size']:,} ({seeded['pending']:,} pending)"
    claim = Row("P7", f"claim ({m['slots']} slots) with {n}", "< 20 ms")
    claim.result = f"median {median(m['claim_ms']):.1f} ms (SQL {m['sql_ms_claim']:.1f} ms)"
    claim.met = median(m["claim_ms"]) < 20 and "requests_claim" in m["indexes_claim"]
    claim.notes = [f"index: {m['indexes_claim']}", f"{CLAIM_RUNS} calls", live]
    frozen = Row("P7", f"status of a frozen batch with {n}", "< 5 ms")
    frozen.result = f"median {median(m['frozen_ms']):.2f} ms"
    frozen.met = median(m["frozen_ms"]) < 5
    frozen.notes = [f"index: {m['indexes_status-frozen']}", f"{STATUS_RUNS} calls"]
    status = Row("P7", f"status of the {live}", "< 5 ms")
    status.result = (
        f"median {median(m['live_ms']):.2f} ms (count SQL {m['sql_ms_status-live-counts']:.1f} ms)"
    )
    status.met = median(m["live_ms"]) < 5
    status.notes = [f"index: {m['indexes_status-live-counts']}", f"{STATUS_RUNS} calls"]
    k = f"{seeded['unclaimable']:,}"
    dead = Row(
        "P7",
        f"claim ({u['slots']} slots) with {k} unswept cancelled and {k} backing off",
        "< 20 ms",
    )
    dead.result = f"median {median(u['claim_ms']):.1f} ms (SQL {u['sql_ms']:.1f} ms)"
    dead.met = median(u["claim_ms"]) < 20 and u["claimed_from"] == [str(seeded["live_batch"])]
    dead.notes = [
        f"index: {u['indexes']}", f"{CLAIM_RUNS} calls", f"beside the {n} and the {live}",
        "both ahead of the live batch in deadline order; claimed from the live batch only"
        if u["claimed_from"] == [str(seeded["live_batch"])]
        else f"claimed from batches {', '.join(u['claimed_from'])}",
    ]  # fmt: skip
    shown = results.resolve()
    if shown.is_relative_to(REPO_ROOT):
        shown = shown.relative_to(REPO_ROOT)
    for row in (claim, frozen, status, dead):
        row.notes.append(f"EXPLAIN in {shown}/explain-*.txt")
        row.raw = {**m, "load_seconds": seeded["load_seconds"]}
    dead.raw = {
        **u, "unclaimable": seeded["unclaimable"],
        "load_seconds": seeded["unclaimable_load_seconds"],
    }  # fmt: skip
    return [claim, frozen, status, dead]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__)
    parser.add_argument("--rows", type=int, default=20_000_000, help="finished requests")
    parser.add_argument("--database-url", help="maintenance database (default: $DATABASE_URL)")
    parser.add_argument("--results-dir", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = parser.parse_args(argv)
    admin = args.database_url or admin_url()[0]
    with fresh_database(admin, "p7", keep=args.keep) as url:
        migrate(url)
        rows = _run(url, args.rows, args.results_dir, print)
        if args.keep:
            print(f"kept {url}")
    for row in rows:
        print(f"{row.measure}: {row.result} [{row.target}] {'; '.join(row.notes)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
