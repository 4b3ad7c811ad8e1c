"""P7: the claim and status queries with millions of finished requests in the table.

Also a script of its own::

    python -m benchmarks.scale --rows 5000000 [--database-url URL] [--results-dir DIR] [--keep]

Loads, in bulk SQL (``generate_series``) consistent with sql/migrations/0001_initial.sql:
``rows`` finished requests in frozen batches of up to 50,000 (2% failed with a 500, the
rest completed with a canned body; input files shared by ten batches each), plus one live
batch of the same size, 40% completed and 60% pending. Then VACUUM ANALYZE and times,
through the repository (pool checkout and row decoding included, as the daemon and the
server pay them): ``claim`` of 256 slots (fewer at tiny scales) for the live batch's
model, and ``get_batch`` of a frozen and of the live batch (which counts its requests),
medians of many calls. ``EXPLAIN (ANALYZE, BUFFERS)`` of each statement is saved to
``explain-*.txt`` in the results directory (the claim's inside a rolled-back transaction).
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
        "frozen_batch": frozen[len(frozen) // 2][0], "live_batch": live,
        "load_seconds": time.perf_counter() - started,
    }  # fmt: skip


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


def measure(url: str, seeded: dict[str, Any], results_dir: Path) -> dict[str, Any]:
    from fusillade.store.postgres import PostgresRepository

    results_dir.mkdir(parents=True, exist_ok=True)
    slots = max(1, min(256, seeded["pending"] // (CLAIM_RUNS + 1)))
    daemon = uuid4()
    frozen, live = seeded["frozen_batch"], seeded["live_batch"]
    out: dict[str, Any] = {"slots": slots}
    with PostgresRepository(url) as repo:
        q = repo.q
        explain = {
            "claim": (q.claim, {"daemon_id": daemon, "now": now(), "models": [MODEL],
                                "slots": [slots]}),
            "status-frozen": (q.get_batch, {"id": frozen, "owner": "default"}),
            "status-live": (q.get_batch, {"id": live, "owner": "default"}),
            "status-live-counts": (q.count_batch_requests, {"batch_ids": [live]}),
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
        out["claim_ms"] = _timed(lambda: repo.claim(daemon, {MODEL: slots}, now=now()), CLAIM_RUNS)
        out["frozen_ms"] = _timed(lambda: repo.get_batch("default", frozen, now=now()), STATUS_RUNS)
        out["live_ms"] = _timed(lambda: repo.get_batch("default", live, now=now()), STATUS_RUNS)
    return out


def p7(env: Env, up: object = None, *, results_dir: Path | None = None) -> list[Row]:
    rows = env.sizes.p7_rows
    results = results_dir or env.results_dir
    with fresh_database(env.admin_url, "p7") as url:
        migrate(url)
        env.log(f"P7: loading {rows:,} finished requests (bulk SQL)")
        seeded = load(url, rows, env.log)
        env.log(f"P7: loaded in {seeded['load_seconds']:.0f} s; timing claim and status")
        m = measure(url, seeded, results)
    return _rows(seeded, m, results)


def _rows(seeded: dict[str, Any], m: dict[str, Any], results: Path) -> list[Row]:
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
    shown = results.resolve()
    if shown.is_relative_to(REPO_ROOT):
        shown = shown.relative_to(REPO_ROOT)
    for row in (claim, frozen, status):
        row.notes.append(f"EXPLAIN in {shown}/explain-*.txt")
        row.raw = {**m, "load_seconds": seeded["load_seconds"]}
    return [claim, frozen, status]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__)
    parser.add_argument("--rows", type=int, default=5_000_000, help="finished requests")
    parser.add_argument("--database-url", help="maintenance database (default: $DATABASE_URL)")
    parser.add_argument("--results-dir", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = parser.parse_args(argv)
    admin = args.database_url or admin_url()[0]
    with fresh_database(admin, "p7", keep=args.keep) as url:
        migrate(url)
        seeded = load(url, args.rows)
        print(f"loaded in {seeded['load_seconds']:.0f} s")
        m = measure(url, seeded, args.results_dir)
        if args.keep:
            print(f"kept {url}")
    for row in _rows(seeded, m, args.results_dir):
        print(f"{row.measure}: {row.result} [{row.target}] {'; '.join(row.notes)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
