"""Large batches: requests are created in chunks, each within the statement timeout,
idempotently, and a creation cut short is finished by a repeat or by maintenance.

The sizes are small and the timeout and chunk lowered to match; the 5,000,000-line run
is measured by hand (docs/performance.md, "Large batches").
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest
from helpers import claim_by_model

from fusillade.core.attempts import ResultKind
from fusillade.core.models import BatchStatus, RequestTemplate
from fusillade.errors import StoreError
from fusillade.store.interface import BatchSpec, DaemonInfo
from fusillade.store.postgres import PostgresRepository

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def templates(n: int) -> Iterator[RequestTemplate]:
    for i in range(n):
        yield RequestTemplate(custom_id=f"req-{i}", model="m1", body=f'{{"model":"m1","i":{i}}}')


def spec(file_id: UUID, batch_id: UUID | None = None) -> BatchSpec:
    return BatchSpec(file_id, "/v1/chat/completions", "24h", timedelta(hours=24), batch_id=batch_id)


def lines_of(db: psycopg.Connection[Any], batch: UUID) -> list[int]:
    rows = db.execute(
        "SELECT line_number FROM requests WHERE batch_id = %s ORDER BY line_number", [batch]
    ).fetchall()
    return [r[0] for r in rows]


# A server where inserting a request costs 0.1 ms, on any machine: a trigger sleeps 10 ms
# every 100 rows. Whether a statement fits a timeout must not depend on the machine's speed
# (a fixed 60,000-row insert fit 400 ms on a fast, idle host).
_SLOW_INSERTS = """
CREATE FUNCTION slow_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.line_number % 100 = 0 THEN PERFORM pg_sleep(0.01); END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER slow_insert BEFORE INSERT ON requests FOR EACH ROW EXECUTE FUNCTION slow_insert();
"""


def test_a_batch_too_large_for_one_statement_is_created_in_chunks(
    database_url: str, db: psycopg.Connection[Any]
) -> None:
    """With a timeout one INSERT of every line cannot meet, chunks each meet it."""
    n, chunk, timeout_ms = 20_000, 1_000, 800  # the whole: >= 2 s; a chunk: 100 ms + work
    db.execute(_SLOW_INSERTS)
    db.commit()
    with PostgresRepository(
        database_url, statement_timeout_ms=timeout_ms, create_chunk=chunk
    ) as repo:
        f = repo.create_file("alice", "big.jsonl", templates(n), now=T0)
        # the single statement of old, under the same timeout, does not fit
        with (
            pytest.raises(psycopg.errors.QueryCanceled),
            psycopg.connect(database_url, options=f"-c statement_timeout={timeout_ms}") as conn,
        ):
            conn.execute(
                "INSERT INTO requests (batch_id, file_id, line_number, model,"
                " batch_expires_at, not_before)"
                " SELECT %s, file_id, line_number, model, %s, %s FROM request_templates"
                " WHERE file_id = %s",
                [uuid4(), T0, T0, f.id],
            )
        view = repo.create_batch("alice", spec(f.id), now=T0)
    assert view.counts.total == n
    assert view.counts.pending == n
    assert lines_of(db, view.record.id) == list(range(1, n + 1))
    created = db.execute(
        "SELECT created_through FROM batches WHERE id = %s", [view.record.id]
    ).fetchone()
    assert created == (None,)  # every request exists


def test_a_creation_cut_short_is_finished_by_a_repeat_without_duplicates(
    database_url: str, db: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    with PostgresRepository(database_url, create_chunk=3) as repo:
        f = repo.create_file("alice", "in.jsonl", templates(10), now=T0)
        batch = uuid4()
        real = repo._create_chunk
        calls = 0

        def dies_after_two_chunks(*args: Any) -> int | None:
            nonlocal calls
            calls += 1
            if calls > 2:
                raise StoreError("the process died")
            return real(*args)

        monkeypatch.setattr(repo, "_create_chunk", dies_after_two_chunks)
        with pytest.raises(StoreError):
            repo.create_batch("alice", spec(f.id, batch), now=T0)
        monkeypatch.undo()

        # half-created: the batch shows every line, the missing ones as pending
        assert lines_of(db, batch) == list(range(1, 7))
        half = repo.get_batch("alice", batch, now=T0)
        assert half.status is BatchStatus.IN_PROGRESS
        assert (half.counts.total, half.counts.pending) == (10, 10)
        assert half.counts.is_consistent

        # the rows that exist may run; finishing all of them does not finish the batch
        d = uuid4()
        repo.register_daemon(DaemonInfo(d, "h", 1, "t"), now=T0)
        claimed = claim_by_model(repo, d, {"m1": 100}, now=T0)
        assert len(claimed) == 6
        ok = [c.result(ResultKind.SUCCEEDED, T0, 200, "{}") for c in claimed]
        assert repo.record_results(d, ok).written == 6
        view = repo.get_batch("alice", batch, now=T0)
        assert view.status is BatchStatus.IN_PROGRESS
        assert view.record.frozen_counts is None
        assert (view.counts.completed, view.counts.pending) == (6, 4)

        # the same call again finishes the creation, inserting each line once
        again = repo.create_batch("alice", spec(f.id, batch), now=T0)
        assert lines_of(db, batch) == list(range(1, 11))
        assert (again.counts.completed, again.counts.pending) == (6, 4)
        assert len(claim_by_model(repo, d, {"m1": 100}, now=T0)) == 4


def test_maintenance_finishes_a_creation_whose_creator_died_but_not_a_live_one(
    database_url: str, db: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    with PostgresRepository(database_url, create_chunk=4) as repo:
        f = repo.create_file("alice", "in.jsonl", templates(10), now=T0)
        batch = uuid4()
        real = repo._create_chunk

        def dies_after_one_chunk(*args: Any) -> int | None:
            monkeypatch.setattr(repo, "_create_chunk", lambda *a: _die())
            return real(*args)

        monkeypatch.setattr(repo, "_create_chunk", dies_after_one_chunk)
        with pytest.raises(StoreError):
            repo.create_batch("alice", spec(f.id, batch), now=T0)
        monkeypatch.undo()
        assert lines_of(db, batch) == [1, 2, 3, 4]

        # a creation that moved within stale_after is a live creator's: left alone
        assert repo.resume_creation(now=T0, stale_before=T0) == 0
        # one that has not moved since is a dead creator's: finished, a chunk per call
        later = T0 + timedelta(seconds=60)
        stale = later - timedelta(seconds=30)
        assert repo.resume_creation(now=later, stale_before=stale) == 1
        # the chunk moved the creation on: another daemon now leaves it to this one
        assert repo.resume_creation(now=later, stale_before=stale) == 0
        assert repo.resume_creation(now=later, stale_before=later + timedelta(seconds=1)) == 1
        assert repo.resume_creation(now=later, stale_before=later + timedelta(seconds=1)) == 0
        assert lines_of(db, batch) == list(range(1, 11))
        assert db.execute(
            "SELECT created_through FROM batches WHERE id = %s", [batch]
        ).fetchone() == (None,)


def _die() -> int | None:
    raise StoreError("the process died")
