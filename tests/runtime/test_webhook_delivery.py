"""Webhooks end to end: real PostgreSQL, real HTTP to an in-process receiver that fails,
hangs, goes down and comes back (docs/webhooks.md)."""

from __future__ import annotations

import base64
import json
import re
import signal
import subprocess
import sys
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any
from uuid import UUID

import attrs
import openai
import psycopg
import pytest
import trio
from helpers import OWNER, daemon_config, make_batch, now, poll_until, wait_status
from prometheus_client import REGISTRY
from psycopg.rows import dict_row
from webhook_receiver import WebhookReceiver

from fusillade.core.ids import format_id
from fusillade.core.models import BatchStatus
from fusillade.core.webhooks import WebhookPolicy
from fusillade.mock_upstream import Behaviour, MockUpstream
from fusillade.runtime import webhooks
from fusillade.runtime.config import Webhook
from fusillade.runtime.daemon import Daemon
from fusillade.store.postgres import PostgresRepository

SECRET = "whsec_" + base64.b64encode(b"fusillade webhook test secret!!").decode()
DAEMON_PROCESS = Path(__file__).resolve().parent.parent / "daemon_process.py"
QUICK = WebhookPolicy(first=timedelta(milliseconds=100), factor=2, cap=timedelta(seconds=0.4))


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_WHSEC", SECRET)


def config(upstream: MockUpstream, url: str, **overrides: Any) -> Any:
    settings: dict[str, Any] = {
        "webhooks": {OWNER: Webhook(url, "TEST_WHSEC")},
        "webhook_allow_private": True,  # the receiver is on loopback
        "webhook_timeout": 2.0,
        "webhook_policy": QUICK,
    }
    settings.update(overrides)
    return daemon_config(upstream, **settings)


def events_of(database_url: str, batch: UUID) -> list[dict[str, Any]]:
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        return conn.execute(
            "SELECT * FROM webhook_events WHERE batch_id = %s ORDER BY created_at", (batch,)
        ).fetchall()


async def delivered(database_url: str, batch: UUID) -> dict[str, Any]:
    rows = await poll_until(
        lambda: trio.to_thread.run_sync(events_of, database_url, batch),
        lambda rows: bool(rows) and rows[0]["delivered_at"] is not None,
    )
    assert len(rows) == 1
    return rows[0]


def unwrap(request: Any) -> Any:
    """The event as OpenAI's SDK reads it, after it has verified the signature."""
    client = openai.OpenAI(api_key="x", webhook_secret=SECRET)
    return client.webhooks.unwrap(request.body, request.headers)


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_a_failed_send_is_retried_with_the_same_signed_event(
    repo: PostgresRepository, mock_upstream: MockUpstream, nursery: trio.Nursery, database_url: str
) -> None:
    receiver = await WebhookReceiver.open(nursery, ["500"])
    before = metric("fusillade_webhook_deliveries_total", result="delivered")
    failed_before = metric("fusillade_webhook_deliveries_total", result="failed")
    batch = await make_batch(repo, 3)
    # the host by name: resolved at send time, sent to the address, Host kept
    url = f"http://localhost:{receiver.port}/hooks"
    daemon = Daemon(repo, config(mock_upstream, url))
    await nursery.start(daemon.run)
    # nobody reads the batch: maintenance freezes it and writes the event
    row = await delivered(database_url, batch)
    first, second = receiver.received
    assert first.body == second.body
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert first.headers["host"] == f"localhost:{receiver.port}"
    event = unwrap(second)
    assert event.type == "batch.completed"
    assert event.id == format_id("event", row["id"]) == second.headers["webhook-id"]
    assert event.data.id == format_id("batch", batch)
    assert json.loads(second.body)["object"] == "event"
    assert (row["type"], row["attempts"], row["last_error"]) == (
        "batch.completed",
        2,
        "answered HTTP 500",
    )
    assert metric("fusillade_webhook_deliveries_total", result="delivered") == before + 1
    assert metric("fusillade_webhook_deliveries_total", result="failed") == failed_before + 1
    # reading the batch again writes no second event
    view = await wait_status(repo, batch)
    assert view.status is BatchStatus.COMPLETED
    assert len(await trio.to_thread.run_sync(events_of, database_url, batch)) == 1
    daemon.stop()


async def test_a_hung_receiver_then_a_down_one_then_back(
    repo: PostgresRepository, mock_upstream: MockUpstream, nursery: trio.Nursery, database_url: str
) -> None:
    receiver = await WebhookReceiver.open(nursery, ["hang"])
    batch = await make_batch(repo, 1)
    daemon = Daemon(repo, config(mock_upstream, receiver.url, webhook_timeout=0.5))
    await nursery.start(daemon.run)
    await receiver.wait_for(1)
    # the hung send times out; the receiver goes down: connections are refused
    receiver.stop()
    rows = await poll_until(
        lambda: trio.to_thread.run_sync(events_of, database_url, batch),
        lambda rows: (
            rows and rows[0]["attempts"] >= 2 and "Connect" in (rows[0]["last_error"] or "")
        ),
    )
    assert rows[0]["delivered_at"] is None
    await poll_until(lambda: metric("fusillade_webhook_outbox_pending") == 1)
    await receiver.start(nursery)
    row = await delivered(database_url, batch)
    assert row["attempts"] >= 3
    ids = {r.headers["webhook-id"] for r in receiver.received}
    assert ids == {format_id("event", row["id"])}
    assert unwrap(receiver.received[-1]).type == "batch.completed"
    await poll_until(lambda: metric("fusillade_webhook_outbox_pending") == 0)
    daemon.stop()


async def test_a_daemon_killed_mid_send_leaves_the_event_to_another(
    repo: PostgresRepository, mock_upstream: MockUpstream, nursery: trio.Nursery, database_url: str
) -> None:
    receiver = await WebhookReceiver.open(nursery, ["hang"])
    batch = await make_batch(repo, 1)
    first = Daemon(repo, config(mock_upstream, receiver.url, webhook_timeout=5))
    killed = trio.CancelScope()

    async def run_first(task_status: trio.TaskStatus[None]) -> None:
        with killed:
            await first.run(task_status=task_status)

    await nursery.start(run_first)
    await receiver.wait_for(1)
    killed.cancel()  # mid-send: the event stays claimed by a daemon that is gone
    row = (await trio.to_thread.run_sync(events_of, database_url, batch))[0]
    assert (row["attempts"], row["delivered_at"]) == (1, None)
    second = Daemon(repo, config(mock_upstream, receiver.url))
    await nursery.start(second.run)
    row = await delivered(database_url, batch)  # once the first daemon's lease ran out
    assert row["attempts"] == 2
    assert len(receiver.received) == 2
    assert receiver.received[0].body == receiver.received[1].body
    assert {r.headers["webhook-id"] for r in receiver.received} == {format_id("event", row["id"])}
    second.stop()


async def test_cancelled_and_expired_batches_send_one_event_each(
    repo: PostgresRepository, mock_upstream: MockUpstream, nursery: trio.Nursery, database_url: str
) -> None:
    mock_upstream.config.default = Behaviour(latency=60)
    receiver = await WebhookReceiver.open(nursery, [])
    cancelled = await make_batch(repo, 3)
    expired = await make_batch(repo, 3, window=timedelta(seconds=2))
    daemon = Daemon(repo, config(mock_upstream, receiver.url, default_concurrency=2))
    await nursery.start(daemon.run)
    await trio.to_thread.run_sync(lambda: repo.cancel_batch(OWNER, cancelled, now=now()))
    got = {}
    for batch in (cancelled, expired):
        row = await delivered(database_url, batch)
        got[format_id("batch", batch)] = row["type"]
    events = [unwrap(r) for r in receiver.received]
    assert {e.data.id: e.type for e in events} == got
    assert sorted(got.values()) == ["batch.cancelled", "batch.expired"]
    assert len(events) == 2
    daemon.stop()


async def test_loopback_is_refused_unless_allowed(
    repo: PostgresRepository, mock_upstream: MockUpstream, nursery: trio.Nursery, database_url: str
) -> None:
    receiver = await WebhookReceiver.open(nursery, [])
    batch = await make_batch(repo, 1)
    url = f"http://localhost:{receiver.port}/hooks"
    daemon = Daemon(repo, config(mock_upstream, url, webhook_allow_private=False))
    await nursery.start(daemon.run)
    rows = await poll_until(
        lambda: trio.to_thread.run_sync(events_of, database_url, batch),
        lambda rows: rows and rows[0]["attempts"] >= 2,
    )
    assert rows[0]["last_error"].startswith("refused: localhost: ")
    assert "loopback" in rows[0]["last_error"]
    assert rows[0]["delivered_at"] is None
    assert receiver.received == []
    daemon.stop()


async def test_events_of_owners_without_a_webhook_wait_unsent(
    repo: PostgresRepository, mock_upstream: MockUpstream, nursery: trio.Nursery, database_url: str
) -> None:
    receiver = await WebhookReceiver.open(nursery, [])
    batch = await make_batch(repo, 1)
    hooks = {"someone else": Webhook(receiver.url, "TEST_WHSEC")}
    daemon = Daemon(repo, config(mock_upstream, receiver.url, webhooks=hooks))
    await nursery.start(daemon.run)
    rows = await poll_until(lambda: trio.to_thread.run_sync(events_of, database_url, batch))
    assert (rows[0]["attempts"], rows[0]["given_up_at"]) == (0, None)
    # at the horizon, maintenance gives it up
    given_up = await trio.to_thread.run_sync(
        lambda: repo.give_up_webhook_events(
            now=now() + timedelta(hours=1), created_before=now() + timedelta(minutes=1)
        )
    )
    assert given_up == 1
    row = (await trio.to_thread.run_sync(events_of, database_url, batch))[0]
    assert row["last_error"] == "not sent: no webhook configured for the owner"
    assert receiver.received == []
    daemon.stop()


async def test_an_event_failing_past_the_horizon_is_given_up_and_said(
    repo: PostgresRepository,
    mock_upstream: MockUpstream,
    nursery: trio.Nursery,
    database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    receiver = await WebhookReceiver.open(nursery, ["503"] * 1000)
    before = metric("fusillade_webhook_deliveries_total", result="given_up")
    batch = await make_batch(repo, 1)
    policy = attrs.evolve(QUICK, horizon=timedelta(seconds=1))
    daemon = Daemon(repo, config(mock_upstream, receiver.url, webhook_policy=policy))
    await nursery.start(daemon.run)
    rows = await poll_until(
        lambda: trio.to_thread.run_sync(events_of, database_url, batch),
        lambda rows: rows and rows[0]["given_up_at"] is not None,
    )
    row = rows[0]
    assert row["delivered_at"] is None
    assert row["last_error"] == "answered HTTP 503"
    assert len(receiver.received) == row["attempts"] >= 2
    assert metric("fusillade_webhook_deliveries_total", result="given_up") == before + 1
    name = format_id("event", row["id"])
    given_up = [r.getMessage() for r in caplog.records if "given up" in r.getMessage()]
    assert given_up == [
        f"webhook {name} (batch.completed) for owner 'alice' given up after "
        f"{row['attempts']} attempts: answered HTTP 503"
    ]
    # one warning for the first failure, not one per attempt
    failures = [r for r in caplog.records if "not delivered" in r.getMessage()]
    assert [r.levelname for r in failures if r.levelname != "DEBUG"] == ["WARNING"]
    daemon.stop()


@pytest.mark.slow
async def test_a_daemon_process_sigkilled_mid_send_leaves_the_event_to_another(
    repo: PostgresRepository, mock_upstream: MockUpstream, nursery: trio.Nursery, database_url: str
) -> None:
    receiver = await WebhookReceiver.open(nursery, ["hang"])
    batch = await make_batch(repo, 2)
    args = [
        sys.executable,
        str(DAEMON_PROCESS),
        database_url,
        mock_upstream.url,
        "4",
        "1.0",
        receiver.url,
    ]
    proc: trio.Process = await nursery.start(
        partial(trio.run_process, args, stdout=subprocess.PIPE, check=False)
    )
    await receiver.wait_for(1)
    proc.send_signal(signal.SIGKILL)  # mid-send: claimed, sent, never settled
    await proc.wait()
    row = (await trio.to_thread.run_sync(events_of, database_url, batch))[0]
    assert (row["attempts"], row["delivered_at"]) == (1, None)
    daemon = Daemon(repo, config(mock_upstream, receiver.url))
    await nursery.start(daemon.run)  # a daemon started after the kill
    row = await delivered(database_url, batch)
    assert row["attempts"] == 2
    first, second = receiver.received
    assert first.body == second.body
    assert (
        first.headers["webhook-id"] == second.headers["webhook-id"] == format_id("event", row["id"])
    )
    assert unwrap(second).data.id == format_id("batch", batch)
    daemon.stop()


@pytest.mark.parametrize(
    ("resolved", "refusal"),
    [
        (["10.0.0.5"], "refused: hooks.example: 10.0.0.5 is a private address"),
        (["93.184.215.14", "169.254.169.254"], "169.254.169.254 is a link-local address"),
        (["fd00::5"], "fd00::5 is a private address"),
    ],
)
async def test_a_name_resolving_inside_is_refused_and_one_allowed_is_pinned(
    monkeypatch: pytest.MonkeyPatch, resolved: list[str], refusal: str
) -> None:
    async def getaddrinfo(host: str, port: int, **_: Any) -> list[Any]:
        assert host == "hooks.example"
        return [(None, None, None, "", (address, port)) for address in resolved]

    monkeypatch.setattr(webhooks.anyio, "getaddrinfo", getaddrinfo)
    with pytest.raises(webhooks.DeliveryFailed, match=re.escape(refusal)):
        await webhooks._pinned_target("https://hooks.example/in?x=1", allow_private=False)
    url, host, sni = await webhooks._pinned_target(
        "https://user:pw@hooks.example:8443/in?x=1", allow_private=True
    )
    first = resolved[0]
    literal = f"[{first}]" if ":" in first else first
    assert (url, host, sni) == (
        f"https://{literal}:8443/in?x=1",
        "hooks.example:8443",
        "hooks.example",
    )
    url, host, sni = await webhooks._pinned_target("http://hooks.example/", allow_private=True)
    assert (url, host, sni) == (f"http://{literal}:80/", "hooks.example", None)


async def test_a_name_that_does_not_resolve_is_a_failed_send() -> None:
    with pytest.raises(webhooks.DeliveryFailed, match="does not resolve"):
        await webhooks._pinned_target("http://no-such-host.invalid/", allow_private=True)
