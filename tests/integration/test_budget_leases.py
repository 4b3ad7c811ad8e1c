"""Budget leases: which daemons share a rate budget (issue 13, item 3), on both stores.

A scope's holders are the running, non-stale daemons leasing it; a daemon leases exactly
the scopes it names; a stopped daemon's leases go at once, a dead one's once its heartbeat
is stale; ``since`` is when the asking daemon first took the lease.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import pytest

from fusillade.store.interface import BudgetHolders, DaemonInfo, Repository
from fusillade.store.memory import MemoryRepository
from fusillade.store.postgres import PostgresRepository

T0 = datetime(2026, 1, 1, tzinfo=UTC)
STALE = timedelta(seconds=30)


@pytest.fixture(params=["memory", "postgres"])
def repo(request: pytest.FixtureRequest) -> Iterator[Repository]:
    if request.param == "memory":
        yield MemoryRepository()
        return
    url = request.getfixturevalue("database_url")
    with PostgresRepository(url, max_size=4) as r:
        yield r


def _daemon(repo: Repository, now: datetime) -> UUID:
    daemon_id = uuid4()
    repo.register_daemon(DaemonInfo(daemon_id, "host", 1, "0"), now=now)
    return daemon_id


def _lease(
    repo: Repository, daemon_id: UUID, scopes: list[str], now: datetime
) -> dict[str, BudgetHolders]:
    return repo.lease_budgets(daemon_id, scopes, now=now, stale_before=now - STALE)


def test_holders_count_the_live_daemons_on_each_scope(repo: Repository) -> None:
    a, b = _daemon(repo, T0), _daemon(repo, T0)
    assert _lease(repo, a, ["up", "up/m"], T0) == {
        "up": BudgetHolders(1, T0),
        "up/m": BudgetHolders(1, T0),
    }
    later = T0 + timedelta(seconds=5)
    repo.heartbeat(a, now=later)
    repo.heartbeat(b, now=later)
    # b joins "up" only; a keeps its first lease time
    assert _lease(repo, b, ["up"], later) == {"up": BudgetHolders(2, later)}
    assert _lease(repo, a, ["up", "up/m"], later) == {
        "up": BudgetHolders(2, T0),
        "up/m": BudgetHolders(1, T0),
    }


def test_a_daemon_holds_only_the_scopes_it_names(repo: Repository) -> None:
    a, b = _daemon(repo, T0), _daemon(repo, T0)
    _lease(repo, a, ["up"], T0)
    _lease(repo, b, ["up"], T0)
    assert _lease(repo, a, ["other"], T0) == {"other": BudgetHolders(1, T0)}
    assert _lease(repo, b, ["up"], T0) == {"up": BudgetHolders(1, T0)}


def test_a_stopped_daemon_gives_its_share_back_at_once(repo: Repository) -> None:
    a, b = _daemon(repo, T0), _daemon(repo, T0)
    _lease(repo, a, ["up"], T0)
    assert _lease(repo, b, ["up"], T0)["up"].holders == 2
    repo.stop_daemon(a, now=T0)
    assert _lease(repo, b, ["up"], T0) == {"up": BudgetHolders(1, T0)}


def test_a_dead_daemons_share_returns_once_its_heartbeat_is_stale(repo: Repository) -> None:
    a, b = _daemon(repo, T0), _daemon(repo, T0)
    _lease(repo, a, ["up"], T0)
    almost = T0 + STALE
    repo.heartbeat(b, now=almost)
    assert _lease(repo, b, ["up"], almost)["up"].holders == 2  # a is not stale yet
    later = T0 + STALE + timedelta(seconds=1)
    repo.heartbeat(b, now=later)
    assert _lease(repo, b, ["up"], later) == {"up": BudgetHolders(1, almost)}
    # a comes back (it was only slow): it holds the scope again, from now
    repo.heartbeat(a, now=later)
    assert _lease(repo, a, ["up"], later) == {"up": BudgetHolders(2, later)}
