"""The webhook outbox, the same on PostgreSQL and in memory: one event per terminal
transition, written by the freeze; claims leased and fenced (docs/webhooks.md)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import pytest

from fusillade.core.models import RequestTemplate
from fusillade.store.interface import BatchSpec, Repository
from fusillade.store.memory import MemoryRepository
from fusillade.store.postgres import PostgresRepository

T0 = datetime(2026, 3, 1, tzinfo=UTC)
S = timedelta(seconds=1)
A, B = uuid4(), uuid4()


@pytest.fixture(params=["memory", "postgres"])
def repo(request: pytest.FixtureRequest) -> Iterator[Repository]:
    if request.param == "memory":
        yield MemoryRepository()
        return
    url = request.getfixturevalue("database_url")
    with PostgresRepository(url, max_size=2) as pg:
        yield pg


def finished_batch(repo: Repository, owner: str = "alice", n: int = 2) -> UUID:
    """A batch whose requests all completed, not read since (so not frozen)."""
    templates = [RequestTemplate(f"c{i}", "m", '{"model":"m"}') for i in range(n)]
    f = repo.create_file(owner, "in.jsonl", templates, now=T0)
    spec = BatchSpec(f.id, "/v1/chat/completions", "24h", timedelta(hours=24))
    batch = repo.create_batch(owner, spec, now=T0).record.id
    repo.cancel_batch(owner, batch, now=T0 + S)  # every request pending: all canceled
    return batch


def finalize_settled(repo: Repository, *, now: datetime) -> int:
    """What maintenance does each round (``Upkeep._finish_settled``): read the settled
    batches nobody read, so they freeze; how many there were."""
    settled = repo.settled_batches()
    for batch in settled:
        repo.get_batch(None, batch, now=now)
    return len(settled)


def test_one_event_per_terminal_transition(repo: Repository) -> None:
    batch = finished_batch(repo)
    assert repo.webhook_outbox_pending(["alice"]) == 1  # the cancel's read froze it
    for _ in range(3):
        repo.get_batch("alice", batch, now=T0 + 2 * S)
    assert finalize_settled(repo, now=T0 + 2 * S) == 0
    (event,) = repo.claim_webhook_events(A, ["alice"], now=T0 + 2 * S, lease_until=T0 + 9 * S)
    assert (event.type, event.batch_id, event.owner, event.attempts) == (
        "batch.cancelled",
        batch,
        "alice",
        1,
    )
    assert event.created_at == T0 + S
    assert repo.webhook_outbox_pending(["bob"]) == 0


def test_a_lease_keeps_others_off_until_it_ends_and_fences_the_old_claim(
    repo: Repository,
) -> None:
    finished_batch(repo)
    (first,) = repo.claim_webhook_events(A, ["alice"], now=T0 + 2 * S, lease_until=T0 + 10 * S)
    assert repo.claim_webhook_events(B, ["alice"], now=T0 + 9 * S, lease_until=T0 + 20 * S) == []
    (second,) = repo.claim_webhook_events(B, ["alice"], now=T0 + 10 * S, lease_until=T0 + 20 * S)
    assert (second.id, second.attempts) == (first.id, 2)
    # the first claimer's failure is fenced off; B's lands
    assert not repo.settle_webhook_event(A, first, next_attempt_at=T0 + 11 * S, error="x")
    assert repo.settle_webhook_event(B, second, next_attempt_at=T0 + 30 * S, error="HTTP 500")
    assert repo.claim_webhook_events(A, ["alice"], now=T0 + 29 * S, lease_until=T0 + 40 * S) == []
    (third,) = repo.claim_webhook_events(A, ["alice"], now=T0 + 30 * S, lease_until=T0 + 40 * S)
    # a slow sender's success counts whoever claimed it last; then nothing is due again
    assert repo.settle_webhook_event(B, second, delivered_at=T0 + 31 * S)
    assert not repo.settle_webhook_event(A, third, delivered_at=T0 + 32 * S)
    assert repo.webhook_outbox_pending(["alice"]) == 0
    assert repo.claim_webhook_events(A, ["alice"], now=T0 + 99 * S, lease_until=T0 + 99 * S) == []


def test_given_up_events_are_not_claimed_and_orphans_are_given_up_at_the_horizon(
    repo: Repository,
) -> None:
    finished_batch(repo, owner="alice")
    finished_batch(repo, owner="nobody")
    (event,) = repo.claim_webhook_events(A, ["alice"], now=T0 + 2 * S, lease_until=T0 + 3 * S)
    assert repo.settle_webhook_event(A, event, given_up_at=T0 + 3 * S, error="HTTP 500")
    assert repo.claim_webhook_events(A, ["alice"], now=T0 + 4 * S, lease_until=T0 + 5 * S) == []
    assert repo.give_up_webhook_events(now=T0 + 4 * S, created_before=T0) == 0
    assert repo.give_up_webhook_events(now=T0 + 4 * S, created_before=T0 + 2 * S) == 1
    assert repo.webhook_outbox_pending(["alice", "nobody"]) == 0


def test_maintenance_freezes_batches_nobody_read(repo: Repository) -> None:
    templates = [RequestTemplate("c0", "m", '{"model":"m"}')]
    f = repo.create_file("alice", "in.jsonl", templates, now=T0)
    spec = BatchSpec(f.id, "/v1/chat/completions", "24h", timedelta(hours=24))
    batch = repo.create_batch("alice", spec, now=T0).record.id
    (claimed,) = repo.claim(A, [(batch, "m", 1)], now=T0)
    assert finalize_settled(repo, now=T0) == 0  # in flight: not settled
    repo.release(A, now=T0)
    repo.sweep(now=T0 + timedelta(days=2))  # past the deadline: expired
    repo.batches_to_abort([batch], now=T0 + timedelta(days=2))
    assert repo.webhook_outbox_pending(["alice"]) == 0
    assert finalize_settled(repo, now=T0 + timedelta(days=2)) >= 1
    (event,) = repo.claim_webhook_events(
        A, ["alice"], now=T0 + timedelta(days=3), lease_until=T0 + timedelta(days=3)
    )
    assert (event.type, event.batch_id) == ("batch.expired", batch)
    assert claimed.id


def test_a_retried_batch_that_ends_again_sends_a_new_event(repo: Repository) -> None:
    batch = finished_batch(repo)
    (first,) = repo.claim_webhook_events(A, ["alice"], now=T0 + 2 * S, lease_until=T0 + 3 * S)
    assert repo.settle_webhook_event(A, first, delivered_at=T0 + 3 * S)
    retried = repo.retry_batch("alice", batch, now=T0 + 4 * S, include_cancelled=True)
    assert retried.status.value == "in_progress"
    assert repo.webhook_outbox_pending(["alice"]) == 0
    repo.cancel_batch("alice", batch, now=T0 + 5 * S)
    repo.get_batch("alice", batch, now=T0 + 6 * S)
    (second,) = repo.claim_webhook_events(A, ["alice"], now=T0 + 6 * S, lease_until=T0 + 7 * S)
    assert (second.type, second.batch_id, second.attempts) == ("batch.cancelled", batch, 1)
    assert second.id != first.id
