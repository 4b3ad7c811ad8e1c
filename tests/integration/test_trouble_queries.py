"""batch_trouble, error_kinds and live_daemons: what progress lines read, on both stores.

Each scenario is played on the PostgreSQL and the in-memory repository, and the answers
are checked against what was played; the plans are checked on a table large enough for
the planner to prefer the indexes (tests/integration/test_queries.py does the same for
the other reads).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import psycopg
import pytest
from helpers import claim_by_model
from test_queries import _plan

from fusillade.core.attempts import AttemptResult, ClaimedRequest, ResultKind
from fusillade.core.models import Failure, FailureReason, RequestTemplate
from fusillade.core.trouble import ErrorSample
from fusillade.store.interface import BatchSpec, DaemonInfo, Repository
from fusillade.store.memory import MemoryRepository
from fusillade.store.postgres import PostgresRepository
from fusillade.store.sqlfiles import load_queries

T0 = datetime(2026, 1, 1, tzinfo=UTC)
OWNER = "alice"


@pytest.fixture(params=["postgres", "memory"])
def repo(request: pytest.FixtureRequest) -> Iterator[Repository]:
    if request.param == "memory":
        yield MemoryRepository()
        return
    url = request.getfixturevalue("database_url")
    with PostgresRepository(url, max_size=2) as pg:
        yield pg


def _batch(repo: Repository, n: int, models: tuple[str, ...] = ("m",)) -> UUID:
    templates = (
        RequestTemplate(custom_id=f"r{i}", model=models[i % len(models)], body="{}")
        for i in range(n)
    )
    f = repo.create_file(OWNER, "in.jsonl", templates, now=T0)
    spec = BatchSpec(f.id, "/v1/chat/completions", "24h", timedelta(hours=24))
    return repo.create_batch(OWNER, spec, now=T0).record.id


def _http(status: int) -> Failure:
    return Failure(FailureReason.HTTP_STATUS, f"upstream answered HTTP {status}")


def _retry(
    c: ClaimedRequest, at: datetime, status: int, due: datetime, body: str = "{}"
) -> AttemptResult:
    return c.result(
        ResultKind.RETRY, at, status=status, body=body, failure=_http(status), not_before=due
    )


def test_a_quiet_batch_has_no_trouble(repo: Repository) -> None:
    b = _batch(repo, 3)
    trouble = repo.batch_trouble(OWNER, b, now=T0)
    assert (trouble.retries_waiting, trouble.rate_limited, trouble.latest_error) == (0, 0, None)
    kinds = repo.error_kinds(OWNER, b)
    assert (kinds.kinds, kinds.scanned) == ((), 0)


def test_retries_waiting_rate_limits_and_latest_errors(repo: Repository) -> None:
    b = _batch(repo, 8, models=("m", "n"))
    d = uuid4()
    repo.register_daemon(DaemonInfo(d, "h", 1, "t"), now=T0)
    c = sorted(claim_by_model(repo, d, {"m": 4, "n": 4}, now=T0), key=lambda x: x.custom_id)
    t1 = T0 + timedelta(seconds=1)
    results = [
        _retry(c[0], t1, 429, T0 + timedelta(seconds=30)),
        _retry(c[1], t1, 429, T0 + timedelta(seconds=40)),
        # the retry due last: its error is the latest retry's (model n)
        _retry(c[2], t1, 500, T0 + timedelta(seconds=50), body='{"error": "boom"}'),
        _retry(c[3], t1, 503, t1),  # due already: waiting for a slot, not for its time
        c[4].result(ResultKind.FAILED, t1, status=401, body="no", failure=_http(401)),
        c[5].result(
            ResultKind.FAILED,
            t1 + timedelta(seconds=1),
            failure=Failure(FailureReason.TIMEOUT, "read timed out"),
        ),
        c[6].result(ResultKind.SUCCEEDED, t1, status=200, body="{}"),
    ]
    assert repo.record_results(d, results).written == len(results)
    now = T0 + timedelta(seconds=2)
    trouble = repo.batch_trouble(OWNER, b, now=now)
    assert (trouble.retries_waiting, trouble.rate_limited, trouble.capped) == (3, 2, False)
    assert trouble.latest_retry == ErrorSample(
        FailureReason.HTTP_STATUS, 500, "upstream answered HTTP 500", '{"error": "boom"}'
    )
    assert trouble.latest_failure == ErrorSample(FailureReason.TIMEOUT, None, "read timed out")
    assert trouble.latest_error == trouble.latest_retry  # retries wait: theirs
    capped = repo.batch_trouble(OWNER, b, now=now, cap=2)
    assert (capped.retries_waiting, capped.capped) == (2, True)
    # later, every retry due: none waits, the last failure is the one shown
    later = repo.batch_trouble(OWNER, b, now=T0 + timedelta(minutes=5))
    assert later.retries_waiting == 0
    assert later.latest_error == later.latest_failure

    kinds = repo.error_kinds(OWNER, b)
    assert [(k.kind, k.count) for k in kinds.kinds] == [("http 401", 1), ("timeout", 1)]
    assert kinds.kinds[0].example.body == "no"
    assert kinds.scanned == 2


def test_error_kinds_are_counted_and_ranked(repo: Repository) -> None:
    b = _batch(repo, 9)
    d = uuid4()
    repo.register_daemon(DaemonInfo(d, "h", 1, "t"), now=T0)
    c = sorted(claim_by_model(repo, d, {"m": 9}, now=T0), key=lambda x: x.custom_id)
    at = [T0 + timedelta(seconds=i) for i in range(9)]
    results = [
        *(
            c[i].result(ResultKind.FAILED, at[i], status=401, body=f"k{i}", failure=_http(401))
            for i in range(3)
        ),
        *(
            c[i].result(ResultKind.FAILED, at[i], status=500, body="x", failure=_http(500))
            for i in range(3, 5)
        ),
        *(
            c[i].result(ResultKind.FAILED, at[i], failure=Failure(FailureReason.CONNECT, "refused"))
            for i in range(5, 7)
        ),
        c[7].result(ResultKind.FAILED, at[7], status=404, body="nf", failure=_http(404)),
        c[8].result(ResultKind.SUCCEEDED, at[8], status=200, body="{}"),
    ]
    repo.record_results(d, results)
    kinds = repo.error_kinds(OWNER, b, top=3)
    # most frequent first; ties by reason (connect before http_status)
    assert [(k.kind, k.count) for k in kinds.kinds] == [
        ("http 401", 3),
        ("connect", 2),
        ("http 500", 2),
    ]
    assert kinds.kinds[0].example.body == "k2"  # the latest of its kind
    assert (kinds.scanned, kinds.capped) == (8, False)
    latest = repo.error_kinds(OWNER, b, scan=2)  # only the latest two rows read
    assert [(k.kind, k.count) for k in latest.kinds] == [("connect", 1), ("http 404", 1)]
    assert (latest.scanned, latest.capped) == (2, True)


def test_live_daemons_are_running_with_a_fresh_heartbeat(repo: Repository) -> None:
    stale_before = T0 - timedelta(seconds=30)
    assert repo.live_daemons(stale_before=stale_before) == 0
    alive, stopped, stale = uuid4(), uuid4(), uuid4()
    repo.register_daemon(DaemonInfo(alive, "h", 1, "t"), now=T0)
    repo.register_daemon(DaemonInfo(stopped, "h", 2, "t"), now=T0)
    repo.stop_daemon(stopped, now=T0)
    repo.register_daemon(DaemonInfo(stale, "h", 3, "t"), now=stale_before - timedelta(seconds=1))
    assert repo.live_daemons(stale_before=stale_before) == 1


def test_trouble_plans_read_the_indexes(database_url: str) -> None:
    """On a large batch, the reads walk requests_claim_retry and requests_errors, never
    the batch's rows in a sequential scan."""
    with PostgresRepository(database_url) as repo:
        b = _batch(repo, 30_000, models=("m0", "m1"))
    q = load_queries()
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("ANALYZE")
        trouble = _plan(
            conn,
            q.batch_trouble,
            {
                "batch_id": b,
                "models": ["m0", "m1"],
                "now": T0,
                "cap": 10_000,
                "recent": 1000,
                "body_prefix": 500,
            },
        )
        assert "requests_claim_retry" in trouble, trouble
        assert "requests_errors" in trouble, trouble
        assert "Seq Scan on requests" not in trouble, trouble
        kinds = _plan(conn, q.error_kinds, {"batch_id": b, "scan": 10, "top": 5, "body_prefix": 9})
        assert "requests_errors" in kinds, kinds
        assert "Seq Scan on requests" not in kinds, kinds
        daemons = _plan(conn, q.live_daemons, {"stale_before": T0})
        assert "Seq Scan on requests" not in daemons, daemons
