"""Idempotency keys in both repositories: replays, conflicts, owners, expiry, forgetting,
and (PostgreSQL) a concurrent create with the key waiting for the first one."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from fusillade.core.idempotency import (
    IDEMPOTENCY_TTL,
    IdempotencyKey,
    batch_fingerprint,
    file_fingerprint,
)
from fusillade.core.models import RequestTemplate
from fusillade.errors import Conflict, NotFound
from fusillade.ids import uuid7
from fusillade.store.interface import BatchSpec, Repository
from fusillade.store.memory import MemoryRepository
from fusillade.store.postgres import PostgresRepository

T0 = datetime(2026, 1, 1, tzinfo=UTC)
ENDPOINT = "/v1/chat/completions"


def templates(n: int = 3, tag: str = "") -> list[RequestTemplate]:
    return [
        RequestTemplate(custom_id=f"c{i}{tag}", model="m", body='{"model": "m"}', path=ENDPOINT)
        for i in range(n)
    ]


def file_key(key: str, content: str = "a") -> IdempotencyKey:
    return IdempotencyKey(key, file_fingerprint("batch", "in.jsonl", content))


def spec(file_id: Any, key: str | None, window: str = "24h") -> BatchSpec:
    idem = None
    if key is not None:
        idem = IdempotencyKey(key, batch_fingerprint(file_id, ENDPOINT, window, None))
    return BatchSpec(file_id, ENDPOINT, window, timedelta(hours=24), idempotency=idem)


@pytest.fixture(params=["memory", "postgres"])
def repo(request: pytest.FixtureRequest, database_url: str) -> Iterator[Repository]:
    if request.param == "memory":
        yield MemoryRepository()
        return
    with PostgresRepository(database_url) as pg:
        yield pg


def test_a_replayed_upload_answers_with_the_first_file(repo: Repository) -> None:
    first = repo.create_file("alice", "in.jsonl", templates(), now=T0, idempotency=file_key("k"))
    later = T0 + timedelta(hours=1)
    again = repo.create_file("alice", "in.jsonl", templates(), now=later, idempotency=file_key("k"))
    assert again == first
    assert len(repo.list_files("alice").items) == 1
    with pytest.raises(Conflict, match="Idempotency-Key 'k' was already used"):
        repo.create_file(
            "alice", "in.jsonl", templates(), now=later, idempotency=file_key("k", "b")
        )
    # another owner's key of the same name is another key
    bobs = repo.create_file("bob", "in.jsonl", templates(), now=later, idempotency=file_key("k"))
    assert bobs.id != first.id
    # a file deleted since: the replay says so
    repo.delete_file("alice", first.id, now=later)
    with pytest.raises(NotFound):
        repo.create_file("alice", "in.jsonl", templates(), now=later, idempotency=file_key("k"))


def test_a_replayed_batch_answers_with_the_first_batch(repo: Repository) -> None:
    f = repo.create_file("alice", "in.jsonl", templates(), now=T0)
    first = repo.create_batch("alice", spec(f.id, "k"), now=T0)
    again = repo.create_batch("alice", spec(f.id, "k"), now=T0 + timedelta(minutes=5))
    assert again.record.id == first.record.id
    assert len(repo.list_batches("alice", now=T0).items) == 1
    with pytest.raises(Conflict):  # another window: another request
        repo.create_batch("alice", spec(f.id, "k", window="1h"), now=T0)
    repo.create_file("alice", "in.jsonl", templates(), now=T0, idempotency=file_key("u"))
    with pytest.raises(Conflict):  # a key of an upload is not a batch's
        repo.create_batch("alice", spec(f.id, "u"), now=T0)
    assert len(repo.list_batches("alice", now=T0).items) == 1


def test_a_refused_create_does_not_keep_its_key(repo: Repository) -> None:
    missing = uuid7()
    with pytest.raises(NotFound):
        repo.create_batch("alice", spec(missing, "k"), now=T0)
    f = repo.create_file("alice", "in.jsonl", templates(), now=T0)
    # the key is free: a corrected request under it creates the batch
    created = repo.create_batch("alice", spec(f.id, "k"), now=T0)
    assert created.record.input_file_id == f.id


def test_keys_expire_and_are_forgotten_in_chunks(repo: Repository) -> None:
    f = repo.create_file("alice", "in.jsonl", templates(), now=T0)
    for i in range(5):
        repo.create_batch("alice", spec(f.id, f"k{i}"), now=T0 + timedelta(seconds=i))
    late = T0 + IDEMPOTENCY_TTL + timedelta(seconds=2)  # k0, k1 (and only they) expired
    # an expired key matches nothing: a different request under it is a new batch
    other = repo.create_batch("alice", spec(f.id, "k0", window="1h"), now=late)
    assert other.record.completion_window == "1h"
    with pytest.raises(Conflict):  # k2 is still live
        repo.create_batch("alice", spec(f.id, "k2", window="1h"), now=late)
    assert repo.forget_idempotency_keys(now=late, limit=5) == 1  # k1 (k0 is new again)
    much_later = late + IDEMPOTENCY_TTL + timedelta(seconds=1)  # all four left
    assert repo.forget_idempotency_keys(now=much_later, limit=2) == 2
    assert repo.forget_idempotency_keys(now=much_later, limit=2) == 2
    assert repo.forget_idempotency_keys(now=much_later, limit=2) == 0


def _waiting_for_a_lock(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
    ).fetchone()
    return bool(row and row[0])


def test_a_concurrent_upload_with_the_key_waits_for_the_first(database_url: str) -> None:
    """The first upload holds its key (uncommitted) mid-COPY; the second, same key and
    request, waits for it and answers with its file: one file stored."""
    gate, inside = threading.Event(), threading.Event()

    def held() -> Iterator[RequestTemplate]:
        yield from templates(2)
        inside.set()
        assert gate.wait(30)
        yield from templates(1, tag="x")

    results: dict[str, Any] = {}
    with (
        PostgresRepository(database_url, max_size=4) as pg,
        psycopg.connect(database_url, autocommit=True) as admin,
    ):

        def create(name: str, source: Any) -> None:
            results[name] = pg.create_file(
                "alice", "in.jsonl", source, now=T0, idempotency=file_key("k")
            )

        first = threading.Thread(target=create, args=("first", held()))
        first.start()
        assert inside.wait(30)
        second = threading.Thread(target=create, args=("second", templates(5)))
        second.start()
        deadline = datetime.now(UTC) + timedelta(seconds=30)
        while not _waiting_for_a_lock(admin):  # the second waits on the key's row
            assert datetime.now(UTC) < deadline, "the second upload did not wait"
            assert "second" not in results
            second.join(0.02)
        gate.set()
        first.join(30)
        second.join(30)
        assert results["second"] == results["first"]
        assert results["first"].line_count == 3
        row = admin.execute("SELECT count(*) FROM files").fetchone()
        assert row == (1,)
