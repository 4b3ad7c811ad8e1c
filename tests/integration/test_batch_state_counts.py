"""batch_state_counts (sql/migrations/0002_batch_state_counts.sql) against a recount.

The status of a live batch reads per-state counts that triggers on ``requests`` keep. They
must equal ``SELECT batch_id, state, count(*) FROM requests GROUP BY 1, 2`` after any
write: every repository operation in random order (seeded, so a failure replays), raw
deletes and truncation, concurrent writers of one batch (which must not deadlock on the
counter rows), and a database migrated while it already held requests (the backfill).
"""

from __future__ import annotations

import random
import shutil
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import attrs
import psycopg
import pytest
from helpers import claim_by_model

from fusillade.core.attempts import AttemptResult, ClaimedRequest, ResultKind
from fusillade.core.models import BatchStatus, Failure, FailureReason, RequestTemplate
from fusillade.errors import Conflict
from fusillade.store.interface import BatchSpec, DaemonInfo
from fusillade.store.migrate import migrate
from fusillade.store.postgres import PostgresRepository
from fusillade.store.sqlfiles import sql_root

T0 = datetime(2026, 1, 1, tzinfo=UTC)
MODELS = ("a", "b")
Counts = dict[tuple[UUID, str], int]

# a count is the sum of its shards (count_batch_requests.sql)
COUNTERS = "SELECT batch_id, state, sum(n) FROM batch_state_counts GROUP BY 1, 2 HAVING sum(n) <> 0"
RECOUNT = "SELECT batch_id, state, count(*) FROM requests GROUP BY 1, 2"


def counters(conn: psycopg.Connection[Any]) -> Counts:
    return {(b, s): n for b, s, n in conn.execute(COUNTERS)}


def recount(conn: psycopg.Connection[Any]) -> Counts:
    return {(b, s): n for b, s, n in conn.execute(RECOUNT)}


def assert_exact(conn: psycopg.Connection[Any], after: str) -> None:
    got, want = counters(conn), recount(conn)
    assert got == want, f"after {after}: counters {got} != recount {want}"


@pytest.fixture
def repo(database_url: str) -> Iterator[PostgresRepository]:
    with PostgresRepository(database_url, max_size=10) as r:
        yield r


def make_batch(repo: PostgresRepository, n: int, now: datetime, window: str = "1h") -> UUID:
    templates = (RequestTemplate(f"r{i}", MODELS[i % len(MODELS)], "{}") for i in range(n))
    f = repo.create_file("alice", "in.jsonl", templates, now=now)
    spec = BatchSpec(f.id, "/v1/chat/completions", window, timedelta(hours=int(window[:-1])))
    return repo.create_batch("alice", spec, now=now).record.id


def new_daemon(repo: PostgresRepository, now: datetime) -> UUID:
    d = uuid4()
    repo.register_daemon(DaemonInfo(d, "host", 1, "test"), now=now)
    return d


def result(c: ClaimedRequest, kind: ResultKind, now: datetime, attempt: int = 0) -> AttemptResult:
    """A result of ``kind`` for claim ``c`` (of another attempt when ``attempt`` is set)."""
    if attempt:
        c = attrs.evolve(c, attempt=attempt)
    if kind is ResultKind.SUCCEEDED:
        return c.result(kind, now, status=200, body="{}", input_tokens=1)
    if kind is ResultKind.FAILED:
        failure = Failure(FailureReason.HTTP_STATUS, "upstream answered 400", 400, "no")
        return c.result(kind, now, status=400, body="no", failure=failure)
    if kind in (ResultKind.CANCELLED, ResultKind.EXPIRED):
        return c.result(kind, now)
    timeout = Failure(FailureReason.TIMEOUT, "read timeout")
    return c.result(kind, now, failure=timeout, not_before=now)


class Mix:
    """Random repository operations over a few batches, daemons and a moving clock."""

    def __init__(self, repo: PostgresRepository, rng: random.Random) -> None:
        self.repo, self.rng = repo, rng
        self.now = T0
        self.batches: list[UUID] = []
        self.daemons = [new_daemon(repo, T0) for _ in range(3)]
        self.claims: list[tuple[UUID, ClaimedRequest]] = []

    def ops(self) -> list[Callable[[], object]]:
        return [
            self.create, self.claim, self.claim, self.claim, self.record, self.record,
            self.record, self.late_success, self.release, self.cancel, self.retry, self.sweep,
            self.reclaim, self.tick, self.status,
        ]  # fmt: skip

    def create(self) -> object:
        self.batches.append(make_batch(self.repo, self.rng.randint(1, 30), self.now))
        return self.batches[-1]

    def claim(self) -> object:
        d = self.rng.choice(self.daemons)
        slots = {m: self.rng.randint(0, 8) for m in MODELS}
        got = claim_by_model(self.repo, d, slots, now=self.now)
        self.claims += [(d, c) for c in got]
        return len(got)

    def record(self) -> object:
        if not self.claims:
            return None
        picked = self.rng.sample(self.claims, self.rng.randint(1, min(12, len(self.claims))))
        by_daemon: dict[UUID, list[AttemptResult]] = {}
        for d, c in picked:
            kind = self.rng.choice(list(ResultKind))
            stale = self.rng.random() < 0.1  # a result of an older attempt: fenced off
            r = result(c, kind, self.now, attempt=c.attempt + 1 if stale else 0)
            by_daemon.setdefault(d, []).append(r)
        return [self.repo.record_results(d, rs).written for d, rs in by_daemon.items()]

    def late_success(self) -> object:
        """A billed result for an attempt that was sent: may replace canceled, and then
        repairs the frozen counts of its batch."""
        if not self.claims:
            return None
        d, c = self.rng.choice(self.claims)
        return self.repo.record_results(d, [result(c, ResultKind.SUCCEEDED, self.now)]).written

    def release(self) -> object:
        return self.repo.release(self.rng.choice(self.daemons), now=self.now)

    def cancel(self) -> object:
        if not self.batches:
            return None
        return self.repo.cancel_batch("alice", self.rng.choice(self.batches), now=self.now).status

    def retry(self) -> object:
        if not self.batches:
            return None
        b = self.rng.choice(self.batches)
        try:
            view = self.repo.retry_batch(
                "alice", b, now=self.now, include_cancelled=self.rng.random() < 0.5
            )
        except Conflict:  # still cancelling
            return "conflict"
        return view.status

    def sweep(self) -> object:
        return self.repo.sweep(now=self.now, limit=self.rng.randint(1, 20))

    def reclaim(self) -> object:
        stale = self.now - timedelta(minutes=self.rng.randint(0, 30))
        if self.rng.random() < 0.5:
            return self.repo.reclaim_timed_out(now=self.now, claimed_before=stale, max_attempts=3)
        stats = self.repo.reclaim_dead(now=self.now, stale_before=stale, max_attempts=3)
        for d in self.daemons:  # dead daemons come back, so claims go on
            self.repo.register_daemon(DaemonInfo(d, "host", 1, "test"), now=self.now)
        return stats

    def tick(self) -> object:
        self.now += timedelta(minutes=self.rng.randint(0, 25))
        for d in self.daemons:
            self.repo.heartbeat(d, now=self.now)
        return self.now

    def status(self) -> object:
        """Reading batches freezes the settled ones."""
        return [v.status for v in self.repo.list_batches("alice", now=self.now, limit=50).items]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_counts_equal_a_recount_after_a_random_mix(repo: PostgresRepository, seed: int) -> None:
    rng = random.Random(seed)
    mix = Mix(repo, rng)
    seen: set[str] = set()
    with psycopg.connect(repo.conninfo, autocommit=True) as conn:
        mix.create()
        for step in range(250):
            op = rng.choice(mix.ops())
            outcome = op()
            seen.add(op.__name__)
            assert_exact(conn, f"step {step}: {op.__name__} -> {outcome!r}")
        assert seen == {op.__name__ for op in mix.ops()}
        states = {s for _, s in recount(conn)}
        assert {"pending", "completed", "failed", "canceled"} <= states, states
        # the status of every live batch is what a recount says
        for view in repo.list_batches("alice", now=mix.now, limit=100).items:
            if view.record.frozen_counts is None:
                rows: dict[str, int] = dict(
                    conn.execute(
                        "SELECT state, count(*) FROM requests WHERE batch_id = %s GROUP BY 1",
                        (view.record.id,),
                    ).fetchall()
                )
                assert view.counts.pending == rows.get("pending", 0)
                assert view.counts.in_progress == rows.get("claimed", 0) + rows.get("processing", 0)
                assert view.counts.completed == rows.get("completed", 0)


def test_deletes_and_truncate_keep_the_counts(repo: PostgresRepository) -> None:
    """Nothing in fusillade deletes requests today; an operator's cleanup must still
    leave the counts right."""
    b1, b2 = make_batch(repo, 10, T0), make_batch(repo, 6, T0)
    d = new_daemon(repo, T0)
    claimed = claim_by_model(repo, d, {"a": 4, "b": 4}, now=T0)
    repo.record_results(d, [result(c, ResultKind.SUCCEEDED, T0) for c in claimed[:5]])
    with psycopg.connect(repo.conninfo, autocommit=True) as conn:
        assert_exact(conn, "setup")
        conn.execute("DELETE FROM requests WHERE batch_id = %s AND state = 'completed'", (b1,))
        assert_exact(conn, "deleting one state of one batch")
        conn.execute("DELETE FROM requests WHERE line_number % 2 = 0")
        assert_exact(conn, "deleting across batches and states")
        live = repo.get_batch("alice", b2, now=T0).counts
        assert live.pending + live.in_progress + live.completed == 3
        conn.execute("TRUNCATE requests")
        assert counters(conn) == {}
        make_batch(repo, 2, T0)
        # what test_store_equivalence does between examples (batch_state_counts is
        # truncated by the cascade too, in the same statement as the trigger's delete)
        conn.execute("TRUNCATE files, request_templates, batches, requests, daemons CASCADE")
        assert conn.execute("SELECT count(*) FROM batch_state_counts").fetchone() == (0,)


def test_a_statement_that_fails_leaves_the_counts_alone(repo: PostgresRepository) -> None:
    make_batch(repo, 3, T0)
    with psycopg.connect(repo.conninfo, autocommit=True) as conn:
        before = counters(conn)
        with pytest.raises(psycopg.errors.CheckViolation):
            # completed without a response breaks requests_completed_fields
            conn.execute("UPDATE requests SET state = 'completed'")
        assert counters(conn) == before
        assert_exact(conn, "a failed update")


def test_concurrent_writers_of_one_batch_keep_exact_counts(
    repo: PostgresRepository,
) -> None:
    """Claims, releases, retries and results of one batch from eight threads at once,
    through the repository: no error (a deadlock would raise in a thread), counts equal
    to a recount, several shards in use, and one row per state once the batch freezes."""
    n, rounds = 4000, 120  # enough rows that the batch does not run out while they race
    b = make_batch(repo, n, T0, window="24h")
    errors: list[BaseException] = []
    kinds = [ResultKind.RETRY] * 6 + [ResultKind.SUCCEEDED] * 3 + [ResultKind.FAILED]

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        d = new_daemon(repo, T0)
        try:
            for _ in range(rounds):
                claimed = claim_by_model(repo, d, {m: rng.randint(1, 8) for m in MODELS}, now=T0)
                if not claimed:
                    return
                if rng.random() < 0.4:  # hand them back, as a daemon shutting down does
                    repo.release(d, now=T0)
                else:
                    repo.record_results(d, [result(c, rng.choice(kinds), T0) for c in claimed])
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)

    def reader() -> None:
        try:
            while not done.is_set():
                repo.get_batch("alice", b, now=T0)
                repo.sweep(now=T0)
        except BaseException as exc:
            errors.append(exc)

    done = threading.Event()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    watcher = threading.Thread(target=reader)
    for t in (*threads, watcher):
        t.start()
    for t in threads:
        t.join(timeout=240)
    done.set()
    watcher.join(timeout=60)
    assert not any(t.is_alive() for t in (*threads, watcher)), "a writer hung"
    assert errors == []
    with psycopg.connect(repo.conninfo, autocommit=True) as conn:
        assert_exact(conn, "the concurrent run")
        rows: dict[str, int] = dict(
            conn.execute("SELECT state, count(*) FROM requests GROUP BY 1").fetchall()
        )
        counts = repo.get_batch("alice", b, now=T0).counts
        assert (counts.pending, counts.completed, counts.failed) == (
            rows.get("pending", 0),
            rows.get("completed", 0),
            rows.get("failed", 0),
        )
        assert counts.completed > 0
        shards = "SELECT count(DISTINCT shard) FROM batch_state_counts WHERE batch_id = %s"
        assert conn.execute(shards, (b,)).fetchone()[0] > 1  # type: ignore[index]
        # finish the batch: its freeze folds the shards into one row per state
        d = new_daemon(repo, T0)
        while claimed := claim_by_model(repo, d, {m: 500 for m in MODELS}, now=T0):
            repo.record_results(d, [result(c, ResultKind.SUCCEEDED, T0) for c in claimed])
        view = repo.get_batch("alice", b, now=T0)
        assert view.status is BatchStatus.COMPLETED and view.record.frozen_counts is not None
        assert conn.execute(shards, (b,)).fetchone() == (1,)
        assert_exact(conn, "the freeze")


def test_writers_sharing_a_shard_take_its_rows_in_one_order(repo: PostgresRepository) -> None:
    """Claims and releases of one batch on connections that share a counter shard.

    A claim moves rows pending -> processing and a release processing -> pending, so both
    update the same two counter rows of their shard, from opposite directions. The trigger
    takes them in (batch, state) order: no deadlock. (Taking decrements first deadlocked
    here several times per run.)
    """
    b = make_batch(repo, 3000, T0, window="24h")
    conns = [psycopg.connect(repo.conninfo, autocommit=True) for _ in range(33)]
    by_shard: dict[int, list[psycopg.Connection[Any]]] = {}
    for conn in conns:  # 33 connections over 16 shards: one shard has three at least
        by_shard.setdefault(conn.info.backend_pid % 16, []).append(conn)
    group = max(by_shard.values(), key=len)[:3]
    for conn in conns:
        if all(conn is not g for g in group):
            conn.close()
    errors: list[BaseException] = []

    def writer(conn: psycopg.Connection[Any], seed: int) -> None:
        rng = random.Random(seed)
        d = uuid4()
        try:
            for _ in range(300):
                counts = [rng.randint(1, 8), rng.randint(1, 8)]
                allotted = {
                    "batch_ids": [b] * len(MODELS),
                    "models": list(MODELS),
                    "counts": counts,
                }
                conn.execute(repo.q.claim, {"daemon_id": d, "now": T0, **allotted})
                conn.execute(repo.q.release, {"daemon_id": d, "now": T0, "ids": None})
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(c, i)) for i, c in enumerate(group)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=240)
    finally:
        for conn in group:
            conn.close()
    assert not any(t.is_alive() for t in threads), "a writer hung"
    assert errors == []
    with psycopg.connect(repo.conninfo, autocommit=True) as conn:
        assert_exact(conn, "the race")
    assert repo.get_batch("alice", b, now=T0).counts.pending == 3000


def test_the_migration_counts_requests_that_were_already_there(
    empty_database_url: str, tmp_path: Path
) -> None:
    """A database that ran 0001 alone, with requests in every state, gets exact counts."""
    shipped = sql_root() / "migrations"
    first = tmp_path / "first"
    first.mkdir()
    shutil.copy(shipped / "0001_initial.sql", first)
    migrate(empty_database_url, directory=first)
    batches = [uuid4() for _ in range(3)]
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        file_id = uuid4()
        conn.execute(
            "INSERT INTO files (id, owner, filename, purpose, created_at)"
            " VALUES (%s, 'alice', 'in', 'batch', %s)",
            (file_id, T0),
        )
        for i, b in enumerate(batches):
            out, err = uuid4(), uuid4()
            for fid, purpose in ((out, "batch_output"), (err, "batch_error")):
                conn.execute(
                    "INSERT INTO files (id, owner, filename, purpose, batch_id, created_at)"
                    " VALUES (%s, 'alice', 'out', %s, %s, %s)",
                    (fid, purpose, b, T0),
                )
            conn.execute(
                "INSERT INTO batches (id, owner, input_file_id, output_file_id, error_file_id,"
                " endpoint, completion_window, created_at, expires_at, total)"
                " VALUES (%s, 'alice', %s, %s, %s, '/v1/chat/completions', '24h', %s, %s, %s)",
                (b, file_id, out, err, T0, T0 + timedelta(hours=24), 10 * (i + 1)),
            )
            # lines 1..10*(i+1): every third pending, the rest completed or failed
            conn.execute(
                "INSERT INTO requests (batch_id, file_id, line_number, model,"
                " batch_expires_at, not_before, state, finished_at, response_status,"
                " response_body, failure_reason)"
                " SELECT %(b)s, %(f)s, g, 'a', %(exp)s, %(t0)s,"
                "   CASE g %% 3 WHEN 0 THEN 'pending' WHEN 1 THEN 'completed' ELSE 'failed' END,"
                "   CASE WHEN g %% 3 <> 0 THEN %(t0)s::timestamptz END,"
                "   CASE WHEN g %% 3 = 1 THEN 200 END, CASE WHEN g %% 3 = 1 THEN '{}' END,"
                "   CASE WHEN g %% 3 = 2 THEN 'http_status' END"
                " FROM generate_series(1, %(n)s) AS g",
                {"b": b, "f": file_id, "exp": T0 + timedelta(hours=24), "t0": T0,
                 "n": 10 * (i + 1)},
            )  # fmt: skip
        assert migrate(empty_database_url) == [m.stem for m in sorted(shipped.glob("*.sql"))][1:]
        assert_exact(conn, "the migration")
        assert sum(counters(conn).values()) == 60
    with PostgresRepository(empty_database_url) as repo:
        view = repo.get_batch("alice", batches[2], now=T0)
        assert (view.counts.pending, view.counts.completed, view.counts.failed) == (10, 10, 10)
