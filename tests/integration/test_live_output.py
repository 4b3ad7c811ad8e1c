"""Following a running batch's output exactly once (live_output.sql), on PostgreSQL.

Two writers record results in transactions of their own; the one that took its
transaction id first commits last. A follower reading between the commits gets the line
committed first at once and the other once it commits (its cursor waits on that
transaction), and no line twice.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest
from helpers import claim_by_model

from fusillade.core.attempts import ClaimedRequest, ResultKind
from fusillade.core.live import LiveLine, LiveLines, ResultCursor
from fusillade.core.models import RequestTemplate
from fusillade.store.interface import BatchSpec, DaemonInfo
from fusillade.store.postgres import PostgresRepository
from fusillade.store.postgres._daemon import record_results_params

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def repo(database_url: str) -> Iterator[PostgresRepository]:
    with PostgresRepository(database_url, max_size=4) as r:
        yield r


def _running_batch(repo: PostgresRepository, n: int) -> tuple[UUID, UUID, list[ClaimedRequest]]:
    """A batch of ``n`` requests, all claimed by one daemon: (batch, daemon, claims)."""
    templates = [RequestTemplate(f"req-{i}", "m1", f'{{"model":"m1","i":{i}}}') for i in range(n)]
    f = repo.create_file("alice", "in.jsonl", templates, now=T0)
    spec = BatchSpec(f.id, "/v1/chat/completions", "24h", timedelta(hours=24))
    batch = repo.create_batch("alice", spec, now=T0).record.id
    daemon = uuid4()
    repo.register_daemon(DaemonInfo(daemon, "host", 1, "test"), now=T0)
    claims = claim_by_model(repo, daemon, {"m1": n}, now=T0)
    assert len(claims) == n
    return batch, daemon, sorted(claims, key=lambda c: c.id)


def _ok(c: ClaimedRequest) -> Any:
    return c.result(ResultKind.SUCCEEDED, T0 + timedelta(seconds=1), 200, '{"ok":true}')


def _read(repo: PostgresRepository, batch: UUID, after: ResultCursor | None) -> LiveLines:
    return repo.live_output("alice", batch, after=after, limit=1000)


def test_a_line_committed_late_is_read_once_it_commits(
    repo: PostgresRepository, database_url: str
) -> None:
    batch, daemon, (c1, c2, c3) = _running_batch(repo, 3)
    with psycopg.connect(database_url) as early, psycopg.connect(database_url) as late:
        # ``early`` records first (it takes the smaller transaction id) and stays open
        early.execute(repo.q.record_results, record_results_params(daemon, [_ok(c1)]))
        late.execute(repo.q.record_results, record_results_params(daemon, [_ok(c2)]))
        late.commit()
        first = _read(repo, batch, None)
        assert [x.line.request_id for x in first.lines] == [c2.id]
        # the cursor waits on ``early``: it may still commit a line below c2's place
        assert len(first.cursor.waiting) >= 1
        again = _read(repo, batch, first.cursor)
        assert again.lines == ()
        early.commit()
    second = _read(repo, batch, again.cursor)
    assert [x.line.request_id for x in second.lines] == [c1.id]
    repo.record_results(daemon, [_ok(c3)])
    third = _read(repo, batch, second.cursor)
    assert [x.line.request_id for x in third.lines] == [c3.id]
    assert _read(repo, batch, third.cursor).lines == ()
    # every line's own cursor resumes after it
    for i, x in enumerate([*first.lines, *second.lines, *third.lines]):
        rest = _read(repo, batch, x.cursor).lines
        assert len(rest) == 2 - i


def test_a_follower_reading_between_interleaved_commits_gets_each_line_once(
    repo: PostgresRepository, database_url: str
) -> None:
    n = 12
    batch, daemon, claims = _running_batch(repo, n)
    got: list[LiveLine] = []
    cursor: ResultCursor | None = None

    def follow() -> None:
        nonlocal cursor
        found = _read(repo, batch, cursor)
        got.extend(found.lines)
        # the cursor goes through its text form, as a client stores it
        cursor = ResultCursor.parse(str(found.cursor))

    with psycopg.connect(database_url) as a, psycopg.connect(database_url) as b:
        # pairs recorded out of commit order: a takes its id first, b commits first
        for i in range(0, n, 2):
            a.execute(repo.q.record_results, record_results_params(daemon, [_ok(claims[i])]))
            b.execute(repo.q.record_results, record_results_params(daemon, [_ok(claims[i + 1])]))
            follow()
            b.commit()
            follow()
            a.commit()
            follow()
    follow()
    ids = [x.line.request_id for x in got]
    assert len(ids) == len(set(ids)) == n


def test_lines_are_formatted_as_in_the_output_file(repo: PostgresRepository) -> None:
    batch, daemon, claims = _running_batch(repo, 2)
    repo.record_results(daemon, [_ok(c) for c in claims])
    live = [x.line for x in _read(repo, batch, None).lines]
    whole = list(repo.iter_results("alice", batch, errors=False))
    assert sorted(live, key=lambda x: x.request_id) == sorted(whole, key=lambda x: x.request_id)
