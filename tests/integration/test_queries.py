"""The shipped SQL against the migrated schema: every query plans, and plans well.

The equivalent of the Rust original's compile-time checked queries: each file in
``sql/queries`` is PREPAREd (parsed, name-resolved and type-checked by PostgreSQL).
"""

from __future__ import annotations

import re
import resource
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import attrs
import psycopg
import pytest
from helpers import claim_by_model

from fusillade.core.attempts import ResultKind
from fusillade.core.models import RequestTemplate
from fusillade.store.interface import BatchSpec, DaemonInfo
from fusillade.store.postgres import PostgresRepository
from fusillade.store.sqlfiles import Queries, load_queries, sql_root

T0 = datetime(2026, 1, 1, tzinfo=UTC)
# Utility statements cannot be PREPAREd; they are run by other tests.
_NOT_PREPARABLE = {"begin", "listen", "lift_statement_timeout"}


def to_positional(sql: str) -> str:
    names: dict[str, int] = {}

    def sub(m: re.Match[str]) -> str:
        return f"${names.setdefault(m.group(1), len(names) + 1)}"

    return re.sub(r"%\((\w+)\)[sbt]", sub, sql)  # text, binary or automatic format


@pytest.mark.parametrize("name", sorted(f.name for f in attrs.fields(Queries)))
def test_every_query_prepares(database_url: str, name: str) -> None:
    if name in _NOT_PREPARABLE:
        pytest.skip("utility statement")
    sql = getattr(load_queries(), name)
    with psycopg.connect(database_url) as conn:
        conn.execute(f"PREPARE q AS {to_positional(sql)}".encode())  # type: ignore[arg-type]


def test_query_files_match_the_queries_class(tmp_path: pytest.TempPathFactory) -> None:
    src = sql_root() / "queries"
    load_queries(src)
    for extra in (True, False):
        d = tmp_path / f"q{extra}"  # type: ignore[operator]
        d.mkdir()
        for f in src.glob("*.sql"):
            if extra or f.stem != "claim":
                (d / f.name).write_text(f.read_text())
        if extra:
            (d / "surprise.sql").write_text("SELECT 1")
        with pytest.raises(RuntimeError, match="surprise" if extra else "claim"):
            load_queries(d)


def _plan(conn: psycopg.Connection[tuple[object, ...]], sql: str, params: dict[str, object]) -> str:
    rows = conn.execute(f"EXPLAIN {sql}".encode(), params).fetchall()  # type: ignore[arg-type]
    return "\n".join(str(r[0]) for r in rows)


def test_plans_use_the_indexes(database_url: str) -> None:
    """Claim, count and list queries must use their indexes on a large table."""
    n = 60_000
    with PostgresRepository(database_url) as repo:
        templates = (
            RequestTemplate(custom_id=f"r{i}", model=f"m{i % 3}", body="{}") for i in range(n)
        )
        f = repo.create_file("alice", "big", templates, now=T0)
        spec = BatchSpec(f.id, "/v1/chat/completions", "24h", timedelta(hours=24))
        big = repo.create_batch("alice", spec, now=T0).record.id
        d = uuid4()
        repo.register_daemon(DaemonInfo(d, "h", 1, "t"), now=T0)
        # finish most of them, as on a busy production table
        for _ in range(n // 2000 - 2):
            claimed = claim_by_model(repo, d, {"m0": 700, "m1": 700, "m2": 600}, now=T0)
            repo.record_results(
                d,
                [c.result(ResultKind.SUCCEEDED, T0, 200, "{}") for c in claimed],
            )
        # the batch the reads below look at: small, beside the big one
        small_file = repo.create_file(
            "alice", "small", (RequestTemplate(f"s{i}", "m0", "{}") for i in range(100)), now=T0
        )
        small = BatchSpec(small_file.id, "/v1/chat/completions", "24h", timedelta(hours=24))
        batch = repo.create_batch("alice", small, now=T0).record.id
    q = load_queries()
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("ANALYZE")
        claim = _plan(
            conn,
            q.claim,
            {
                "daemon_id": d,
                "now": T0,
                "batch_ids": [big, big],
                "models": ["m0", "m1"],
                "counts": [10, 10],
            },
        )
        assert "requests_claim" in claim, claim
        counts = _plan(conn, q.count_batch_requests, {"batch_ids": [batch]})
        # The counts come from batch_state_counts (a row per state and shard), never from
        # requests. With two batches the table is one page and a scan of it is cheaper;
        # with 20,000 batches the plan was a scan of batch_state_counts_pkey.
        assert "requests" not in counts, counts
        assert "batch_state_counts_pkey" in counts or "Seq Scan on batch_state_counts" in counts
        listing = _plan(conn, q.list_batches, {"owner": "alice", "after": None, "limit": 21})
        assert "batches_owner_list" in listing or "Seq Scan on batches" in listing, listing
        output = _plan(
            conn,
            q.stream_output,
            {"batch_id": batch, "after_time": T0, "after_id": uuid4(), "limit": 1000},
        )
        assert "requests_output" in output, output
        requests = _plan(
            conn,
            q.list_requests,
            {"batch_id": batch, "states": None, "after_line": 0, "limit": 21},
        )
        assert "requests_batch_line" in requests, requests
        # run --ordered: pages read in line order from the index, the batch never sorted
        for b in (batch, big):
            params = {"batch_id": b, "after_line": 0, "limit": 5000}
            by_line = _plan(conn, q.stream_by_line, params)
            assert "requests_batch_line" in by_line, by_line
            page = by_line.split("CTE Scan")[0]  # the page, before the per-row lookups
            assert "Sort Key: r.line_number" not in page, by_line
            assert "Filter" not in page, by_line  # every row it reads is in the page
        # The status page: every part reads a partial index, never a scan of the requests
        # (most rows of the big batch finished before `since`, as on a busy table).
        since = T0 + timedelta(minutes=1)
        models = _plan(conn, q.status_models, {"batch_ids": [big, batch], "since": since})
        assert "Seq Scan on requests" not in models, models
        assert "requests_output" in models and "requests_errors" in models, models
        failures = _plan(conn, q.status_failures, {"batch_ids": [big, batch], "limit": 20})
        assert "requests_errors" in failures, failures
        assert "Seq Scan on requests" not in failures, failures
        for owner in ("alice", None):
            shown = _plan(conn, q.status_batches, {"owner": owner, "limit": 20})
            assert "Seq Scan on requests" not in shown, shown


def test_claim_with_a_large_backlog_reads_by_primary_key(database_url: str) -> None:
    """A claim of a few rows from a large pending backlog touches only those rows.

    The planner guesses LIMIT slots at a tenth of the backlog; joined directly to the
    UPDATE and to the templates, that guess made both hash joins over sequential scans
    of the whole tables (165 ms for 16 rows with 400,000 pending).
    """
    n = 30_000
    with PostgresRepository(database_url) as repo:
        templates = (RequestTemplate(custom_id=f"r{i}", model="m", body="{}") for i in range(n))
        f = repo.create_file("alice", "backlog", templates, now=T0)
        spec = BatchSpec(f.id, "/v1/chat/completions", "24h", timedelta(hours=24))
        batch = repo.create_batch("alice", spec, now=T0).record.id
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("ANALYZE")
        _assert_claim_reads_only_its_rows(conn, batch)


def _assert_claim_reads_only_its_rows(
    conn: psycopg.Connection[tuple[object, ...]], batch: UUID
) -> None:
    params = {
        "daemon_id": uuid4(), "now": T0, "batch_ids": [batch], "models": ["m"], "counts": [16]
    }  # fmt: skip
    claim = _plan(conn, load_queries().claim, params)
    assert "requests_claim_fresh" in claim, claim
    assert "requests_claim_retry" in claim, claim
    # Sorted: a batch's at most 2 x n rows from its two indexes; never the backlog's rows.
    assert set(re.findall(r"Sort Key: (.*)", claim)) <= _CLAIM_SORTS, claim
    assert "Seq Scan on requests" not in claim, claim
    assert "Seq Scan on request_templates" not in claim, claim


_CLAIM_SORTS = {"f.line_number", "u.line_number"}


_SEED_FILE = """
INSERT INTO files (id, owner, filename, purpose, bytes, line_count, models, created_at)
VALUES (%(id)s, 'alice', 'big.jsonl', 'batch', 0, %(n)s, ARRAY['m'], %(now)s)
"""
_SEED_TEMPLATES = """
INSERT INTO request_templates (file_id, line_number, custom_id, method, path, model, body)
SELECT %(id)s, g, 'r' || g, 'POST', '/v1/chat/completions', 'm', '{}'
FROM generate_series(1, %(n)s) AS g
"""


def test_claim_before_the_first_analyze_of_a_large_backlog(database_url: str) -> None:
    """Before autovacuum's first ANALYZE of a new 600,000-row backlog, the claim still
    reads only its rows. Joined to batches, the planner put the batch first, read all of
    its pending rows and sorted them (263 ms for 16 rows; 477 ms at 1,000,000); at
    300,000 rows it did not, hence the size."""
    n = 600_000
    file_id = uuid4()
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(_SEED_FILE, {"id": file_id, "n": n, "now": T0})
        conn.execute(_SEED_TEMPLATES, {"id": file_id, "n": n})
    with PostgresRepository(database_url, statement_timeout_ms=600_000) as repo:
        spec = BatchSpec(file_id, "/v1/chat/completions", "24h", timedelta(hours=24))
        batch = repo.create_batch("alice", spec, now=T0).record.id
    with psycopg.connect(database_url, autocommit=True) as conn:
        analyzed = conn.execute(
            "SELECT count(*) FROM pg_stat_user_tables"
            " WHERE relname = 'requests' AND last_autoanalyze IS NOT NULL"
        ).fetchone()
        if analyzed != (0,):
            pytest.skip("autovacuum analyzed the table first")
        _assert_claim_reads_only_its_rows(conn, batch)


_SEED_BATCH = (
    """
INSERT INTO files (id, owner, filename, purpose, batch_id, created_at)
VALUES (%(output)s, 'alice', 'out', 'batch_output', %(id)s, %(now)s),
       (%(error)s, 'alice', 'err', 'batch_error', %(id)s, %(now)s)
""",
    """
INSERT INTO batches (id, owner, input_file_id, output_file_id, error_file_id, endpoint,
    completion_window, created_at, expires_at, total, models, cancelling_at)
VALUES (%(id)s, 'alice', %(file)s, %(output)s, %(error)s, '/v1/chat/completions', '24h',
    %(now)s, %(expires)s, %(n)s, ARRAY['m'], %(cancelling_at)s)
""",
    """
INSERT INTO requests (batch_id, file_id, line_number, model, batch_expires_at, attempts,
    not_before)
SELECT %(id)s, %(file)s, g, 'm', %(expires)s, %(attempts)s, %(not_before)s
FROM generate_series(1, %(n)s) AS g
""",
)


def test_claim_cost_does_not_grow_with_unswept_cancelled_or_backing_off_rows(
    database_url: str,
) -> None:
    """Issue 11, item 6. Rows of a cancelled batch that no sweep has reached, and rows
    waiting for a retry's not_before, came first in requests_claim's order and were
    filtered one by one (140,000 of them: 130-190 ms for every claim). Here 50,000 of
    each, with earlier deadlines than the live batch. A claim allotting 16 rows to each
    of the three batches (the cancelled one as if from a stale snapshot) reads a bounded
    number of pages, filters no row, and takes its rows from the live batch only (before
    issue 11: 52,405 pages and 100,000 rows filtered; then 46)."""
    n = 50_000
    seeded = []
    with PostgresRepository(database_url) as repo:
        f = repo.create_file(
            "alice", "live", (RequestTemplate(f"r{i}", "m", "{}") for i in range(100)), now=T0
        )
        for hours, attempts, not_before, cancelling_at in (
            (20, 0, T0, T0),  # cancelled, not swept
            (22, 1, T0 + timedelta(hours=1), None),  # attempted once, backing off
        ):
            seeded.append(uuid4())
            seed = {
                "id": seeded[-1], "output": uuid4(), "error": uuid4(), "file": f.id, "now": T0,
                "expires": T0 + timedelta(hours=hours), "n": n, "attempts": attempts,
                "not_before": not_before, "cancelling_at": cancelling_at,
            }  # fmt: skip
            with psycopg.connect(database_url) as conn:
                for statement in _SEED_BATCH:
                    conn.execute(statement, seed)  # type: ignore[arg-type]
        spec = BatchSpec(f.id, "/v1/chat/completions", "24h", timedelta(hours=24))
        live = repo.create_batch("alice", spec, now=T0).record.id
    allotments = [(b, "m", 16) for b in (*seeded, live)]
    params = {
        "daemon_id": uuid4(), "now": T0, "batch_ids": [*seeded, live], "models": ["m"] * 3,
        "counts": [16] * 3,
    }  # fmt: skip
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
        with conn.transaction(force_rollback=True):
            sql = f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {load_queries().claim}"
            ((plan,),) = conn.execute(sql.encode(), params).fetchall()  # type: ignore[arg-type]
    picked = _node(plan[0]["Plan"], lambda node: node.get("Subplan Name") == "CTE picked")
    pages = picked["Shared Hit Blocks"] + picked["Shared Read Blocks"]
    filtered = sum(
        node.get("Rows Removed by Filter", 0) * node["Actual Loops"]
        for node in _nodes(picked)
        if node.get("Relation Name") == "requests"
    )
    assert picked["Actual Rows"] == 16
    assert pages < 500 and filtered == 0, (pages, filtered)
    with PostgresRepository(database_url) as repo:
        d = uuid4()
        repo.register_daemon(DaemonInfo(d, "h", 1, "t"), now=T0)
        assert [b.id for b in repo.claimable_batches(now=T0)] == [seeded[1], live]
        claimed = repo.claim(d, allotments, now=T0)
    assert {c.batch_id for c in claimed} == {live}
    assert sorted(c.custom_id for c in claimed) == sorted(f"r{i}" for i in range(16))


def _nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", ()):
        yield from _nodes(child)


def _node(plan: dict[str, Any], match: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    (found,) = (node for node in _nodes(plan) if match(node))
    return found


def test_results_stream_100k_rows_in_flat_memory(database_url: str) -> None:
    n = 100_000
    with PostgresRepository(database_url) as repo:
        body = '{"choices":[{"message":{"content":"' + "x" * 200 + '"}}]}'
        templates = (RequestTemplate(custom_id=f"r{i}", model="m", body="{}") for i in range(n))
        f = repo.create_file("alice", "big", templates, now=T0)
        spec = BatchSpec(f.id, "/v1/chat/completions", "24h", timedelta(hours=24))
        batch = repo.create_batch("alice", spec, now=T0).record.id
        d = uuid4()
        repo.register_daemon(DaemonInfo(d, "h", 1, "t"), now=T0)
        while claimed := claim_by_model(repo, d, {"m": 5000}, now=T0):
            repo.record_results(
                d,
                [c.result(ResultKind.SUCCEEDED, T0, 200, body) for c in claimed],
            )
        stream = repo.iter_results("alice", batch, errors=False)
        seen = 0
        for _ in range(10_000):
            next(stream)
            seen += 1
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        ids = set()
        for line in stream:
            seen += 1
            ids.add(line.custom_id)
        grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base
        assert seen == n
        assert len(ids) == n - 10_000
        # 90,000 lines of ~260 bytes are ~23 MB if held at once; paging keeps growth far
        # below (the set of ids above accounts for ~8 MB of it).
        assert grown_kb < 20_000, grown_kb
        del ids
        # run --ordered's read, in line order: as flat, its first pages included
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        by_line = repo.iter_results_by_line("alice", batch)
        last = max(int(line.custom_id[1:]) for line in by_line)
        grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base
    assert last == n - 1
    assert grown_kb < 20_000, grown_kb
