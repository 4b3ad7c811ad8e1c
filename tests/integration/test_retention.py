"""Retention in both repositories (docs/semantics.md, "Retention"): expired uploads,
deleted files' content and keys, old finished batches' requests, output expiry, stopped
daemons; a running batch is never touched, and the purge goes in bounded chunks."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import psycopg
import pytest

from fusillade.core.attempts import ResultKind
from fusillade.core.batches import INPUT_GONE
from fusillade.core.models import BatchStatus, RequestTemplate
from fusillade.errors import Conflict, NotFound
from fusillade.ids import uuid7
from fusillade.store.interface import BatchSpec, DaemonInfo, PurgeStats, Repository
from fusillade.store.memory import MemoryRepository
from fusillade.store.postgres import PostgresRepository

T0 = datetime(2026, 1, 1, tzinfo=UTC)
ENDPOINT = "/v1/chat/completions"
DAY = timedelta(days=1)
FAR = T0 + timedelta(days=3650)  # daemons: never stopped that long ago


def templates(n: int, key: str | None = None) -> list[RequestTemplate]:
    return [
        RequestTemplate(f"c{i}", "m", '{"model": "m", "secret": "prompt"}', ENDPOINT, api_key=key)
        for i in range(n)
    ]


@pytest.fixture(params=["memory", "postgres"])
def repo(request: pytest.FixtureRequest, database_url: str) -> Iterator[Repository]:
    if request.param == "memory":
        yield MemoryRepository()
        return
    with PostgresRepository(database_url) as pg:
        yield pg


def stored(repo: Repository, file_id: UUID) -> list[tuple[str, str, str | None]]:
    """The templates stored for a file, deleted or not: (custom_id, body, api_key)."""
    if isinstance(repo, MemoryRepository):
        return [(t.custom_id, t.body, t.api_key) for t in repo._templates.get(file_id, [])]
    assert isinstance(repo, PostgresRepository)
    with repo._tx() as cur:
        rows = cur.execute(
            "SELECT custom_id, body, api_key FROM request_templates WHERE file_id = %s "
            "ORDER BY line_number",
            (file_id,),
        ).fetchall()
    return [(r["custom_id"], r["body"], r["api_key"]) for r in rows]


def request_count(repo: Repository, batch_id: UUID) -> int:
    return len(repo.list_requests("alice", batch_id, limit=100).items)


def purge_all(
    repo: Repository, *, now: datetime, finished_before: datetime | None, **kw: Any
) -> PurgeStats:
    total = PurgeStats()
    for _ in range(1000):
        step = repo.purge(
            now=now,
            finished_before=finished_before,
            stopped_before=kw.get("stopped_before", T0),
            limit=kw.get("limit", 1000),
        )
        total += step
        if not step.more:
            return total
    raise AssertionError("the purge never ended")


def finish(repo: Repository, batch_id: UUID, at: datetime, n: int) -> None:
    """Run ``n`` requests of the batch to success at ``at`` (a daemon of the test's)."""
    daemon = uuid7()
    repo.register_daemon(DaemonInfo(daemon, "h", 1, "t"), now=at)
    claimed = repo.claim(daemon, [(batch_id, "m", n)], now=at)
    assert len(claimed) == n
    repo.record_results(
        daemon, [c.result(ResultKind.SUCCEEDED, at, status=200, body="{}") for c in claimed]
    )


def batch(repo: Repository, file_id: UUID, at: datetime, **kw: Any) -> UUID:
    spec = BatchSpec(file_id, ENDPOINT, "24h", DAY, **kw)
    return repo.create_batch("alice", spec, now=at).record.id


def test_an_upload_past_its_expiry_goes_within_one_round(repo: Repository) -> None:
    f = repo.create_file("alice", "in.jsonl", templates(3), now=T0, expires_at=T0 + DAY)
    keep = repo.create_file("alice", "keep.jsonl", templates(2), now=T0)
    assert repo.get_file("alice", f.id).expires_at == T0 + DAY
    assert purge_all(repo, now=T0 + DAY / 2, finished_before=None) == PurgeStats()
    assert len(stored(repo, f.id)) == 3
    stats = purge_all(repo, now=T0 + DAY, finished_before=None)
    assert (stats.expired_files, stats.purged_files, stats.templates) == (1, 1, 3)
    with pytest.raises(NotFound):
        repo.get_file("alice", f.id)
    assert stored(repo, f.id) == []
    assert [x.id for x in repo.list_files("alice").items] == [keep.id]
    assert len(stored(repo, keep.id)) == 2


def test_a_deleted_file_loses_its_content_and_keys(repo: Repository) -> None:
    f = repo.create_file("alice", "in.jsonl", templates(3, key="sk-secret"), now=T0)
    repo.delete_file("alice", f.id, now=T0)
    stats = purge_all(repo, now=T0, finished_before=None)
    assert (stats.purged_files, stats.templates) == (1, 3)
    assert stored(repo, f.id) == []


def test_a_running_batch_keeps_its_deleted_input_until_it_finishes(repo: Repository) -> None:
    """The input of an unfinished batch is untouched; once it finished, bodies and keys
    go but the custom_ids its results name stay; once its requests go, the rest goes."""
    f = repo.create_file("alice", "in.jsonl", templates(3, key="sk-secret"), now=T0)
    b = batch(repo, f.id, T0)
    repo.delete_file("alice", f.id, now=T0)
    with pytest.raises(Conflict, match="input file was deleted"):
        repo.retry_batch("alice", b, now=T0)
    assert INPUT_GONE
    assert purge_all(repo, now=T0, finished_before=T0 + DAY) == PurgeStats()
    assert len(stored(repo, f.id)) == 3 and stored(repo, f.id)[0][2] == "sk-secret"
    finish(repo, b, T0 + timedelta(hours=1), 3)
    assert repo.get_batch("alice", b, now=T0 + timedelta(hours=1)).status is BatchStatus.COMPLETED
    stats = purge_all(repo, now=T0 + timedelta(hours=1), finished_before=None)
    assert (stats.purged_files, stats.templates, stats.batches) == (1, 3, 0)
    assert stored(repo, f.id) == [(f"c{i}", "", None) for i in range(3)]
    # the results still name their custom_ids
    assert sorted(r.custom_id for r in repo.iter_results("alice", b, errors=False)) == [
        "c0",
        "c1",
        "c2",
    ]
    later = T0 + timedelta(days=40)
    stats = purge_all(repo, now=later, finished_before=later - timedelta(days=30))
    assert (stats.batches, stats.requests) == (1, 3)
    assert stored(repo, f.id) == []


def test_an_old_finished_batch_loses_its_requests_but_still_answers(repo: Repository) -> None:
    f = repo.create_file("alice", "in.jsonl", templates(5), now=T0)
    old = batch(repo, f.id, T0)
    running = batch(repo, f.id, T0)
    finish(repo, old, T0 + timedelta(hours=1), 5)
    finish(repo, running, T0 + timedelta(hours=1), 2)  # 3 left pending
    done = repo.get_batch("alice", old, now=T0 + timedelta(hours=2))
    # not yet old enough
    cutoff = T0 + timedelta(minutes=30)
    assert purge_all(repo, now=T0 + timedelta(hours=2), finished_before=cutoff) == PurgeStats()
    now = T0 + timedelta(hours=3)
    stats = purge_all(repo, now=now, finished_before=T0 + timedelta(hours=2), limit=2)
    assert (stats.batches, stats.requests) == (1, 5)
    after = repo.get_batch("alice", old, now=now)
    assert after.status is BatchStatus.COMPLETED
    assert after.counts == done.counts and after.counts.completed == 5
    assert request_count(repo, old) == 0
    for file_id in (after.record.output_file_id, after.record.error_file_id):
        with pytest.raises(NotFound):
            repo.get_file("alice", file_id)
    # the unfinished batch and its input are untouched
    assert request_count(repo, running) == 5
    assert repo.get_batch("alice", running, now=now).counts.pending == 3
    assert len(stored(repo, f.id)) == 5
    repo.get_file("alice", f.id)


def test_output_expiry_removes_a_finished_batchs_results(repo: Repository) -> None:
    f = repo.create_file("alice", "in.jsonl", templates(2), now=T0)
    b = batch(repo, f.id, T0, output_expires_after=timedelta(hours=2))
    view = repo.get_batch("alice", b, now=T0)
    assert repo.get_file("alice", view.record.output_file_id).expires_at == T0 + timedelta(hours=2)
    finish(repo, b, T0 + timedelta(hours=1), 2)
    repo.get_batch("alice", b, now=T0 + timedelta(hours=1))  # freezes it
    assert purge_all(repo, now=T0 + timedelta(hours=1), finished_before=None) == PurgeStats()
    stats = purge_all(repo, now=T0 + timedelta(hours=2), finished_before=None)
    assert (stats.expired_files, stats.batches, stats.requests) == (2, 1, 2)
    assert request_count(repo, b) == 0
    with pytest.raises(NotFound):
        repo.get_file("alice", view.record.output_file_id)
    assert repo.get_batch("alice", b, now=T0 + timedelta(hours=2)).counts.completed == 2


def test_a_finished_batch_nobody_read_is_found_after_its_window(repo: Repository) -> None:
    f = repo.create_file("alice", "in.jsonl", templates(2), now=T0)
    b = batch(repo, f.id, T0)
    finish(repo, b, T0 + timedelta(hours=1), 2)  # never read: not frozen
    now = T0 + timedelta(days=2)
    cutoff = now - timedelta(hours=12)
    preview = repo.purge_preview(now=now, finished_before=cutoff, stopped_before=T0)
    assert (preview.batches, preview.requests) == (1, 2)
    stats = purge_all(repo, now=now, finished_before=cutoff)
    assert (stats.batches, stats.requests) == (1, 2)


def test_stopped_daemons_rows_go_after_a_while(repo: Repository) -> None:
    stopped, running = uuid7(), uuid7()
    repo.register_daemon(DaemonInfo(stopped, "h", 1, "t"), now=T0)
    repo.register_daemon(DaemonInfo(running, "h", 2, "t"), now=T0)
    repo.stop_daemon(stopped, now=T0)
    week = timedelta(days=7)
    stats = purge_all(repo, now=T0 + DAY, finished_before=None, stopped_before=T0 + DAY - week)
    assert stats.daemons == 0
    now = T0 + week + DAY
    assert repo.purge_preview(now=now, finished_before=None, stopped_before=now - week).daemons == 1
    stats = purge_all(repo, now=now, finished_before=None, stopped_before=now - week)
    assert stats.daemons == 1
    assert repo.purge_preview(now=now, finished_before=None, stopped_before=now - week).daemons == 0
    assert repo.heartbeat(running, now=now)  # the running one's row is still there


def test_the_preview_counts_what_a_purge_removes(repo: Repository) -> None:
    f = repo.create_file("alice", "in.jsonl", templates(4), now=T0, expires_at=T0 + DAY)
    b = batch(repo, f.id, T0)
    finish(repo, b, T0 + timedelta(hours=1), 4)
    repo.get_batch("alice", b, now=T0 + timedelta(hours=1))
    gone = repo.create_file("alice", "gone.jsonl", templates(3), now=T0)
    repo.delete_file("alice", gone.id, now=T0)
    now = T0 + 2 * DAY
    preview = repo.purge_preview(now=now, finished_before=now - DAY, stopped_before=T0)
    assert preview == PurgeStats(
        expired_files=1, purged_files=2, templates=7, batches=1, requests=4, daemons=0
    )
    assert request_count(repo, b) == 4  # nothing changed
    stats = purge_all(repo, now=now, finished_before=now - DAY)
    assert (stats.expired_files, stats.purged_files, stats.batches, stats.requests) == (
        1,
        2,
        1,
        4,
    )
    assert attrs_zero(repo.purge_preview(now=now, finished_before=now - DAY, stopped_before=T0))


def attrs_zero(stats: PurgeStats) -> bool:
    return stats == PurgeStats()


def test_purge_of_postgres_keeps_to_its_chunks(database_url: str) -> None:
    """Each call removes at most ``limit`` rows of each kind and says when more is left."""
    with PostgresRepository(database_url) as repo:
        f = repo.create_file("alice", "in.jsonl", templates(5), now=T0)
        b = batch(repo, f.id, T0)
        finish(repo, b, T0, 5)
        repo.get_batch("alice", b, now=T0)
        repo.delete_file("alice", f.id, now=T0)
        first = repo.purge(now=T0 + DAY, finished_before=T0 + DAY, stopped_before=T0, limit=2)
        assert first.more and first.requests == 2 and first.templates == 2
        with psycopg.connect(database_url) as conn:
            row = conn.execute("SELECT count(*) FROM requests").fetchone()
            assert row == (3,)
