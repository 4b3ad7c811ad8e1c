"""Through a real PgBouncer, in session and in transaction pooling (issue 11, item 5).

PgBouncer refuses the ``options`` startup parameter (or, where ``ignore_startup_parameters``
lets it through, drops it: no statement timeout at all), and in transaction pooling lends
a server connection for one transaction only: session settings and LISTEN do not stick.
The repository gives each transaction its settings with ``SET LOCAL`` (``begin.sql``) and
the daemon falls back to polling when its LISTEN probe never comes back.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

import attrs
import httpx
import psycopg
import pytest
import trio
from helpers import poll_until
from pgbouncer import PgBouncer
from pgbouncer import pgbouncer_fixture as pgbouncer_fixture  # registers ``pgbouncer``
from psycopg import pq
from upstream import mock_upstream_fixture  # noqa: F401 (registers ``mock_upstream``)

import fusillade.runtime.listen
from fusillade.config import ServerSettings, Settings, UpstreamSettings
from fusillade.core.attempts import ClaimedRequest, ResultKind
from fusillade.core.models import RequestTemplate
from fusillade.errors import StoreUnavailable
from fusillade.mock_upstream import MockUpstream
from fusillade.server.serve import Running, serve
from fusillade.store.interface import BatchSpec, DaemonInfo
from fusillade.store.postgres import PostgresRepository

pytestmark = pytest.mark.slow

NO_NOTIFICATIONS = "notifications do not reach this daemon"


def chat_line(i: int) -> dict[str, object]:
    return {
        "custom_id": f"c{i}",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "m", "messages": [{"role": "user", "content": f"hi {i}"}]},
    }


def test_statement_timeout_is_in_force_through_pgbouncer(pgbouncer: PgBouncer) -> None:
    with PostgresRepository(pgbouncer.url, statement_timeout_ms=200) as repo:
        with repo._tx() as cur:
            settings = cur.execute(
                "SELECT current_setting('statement_timeout') AS timeout,"
                " current_setting('jit') AS jit"
            ).fetchone()
        assert settings == {"timeout": "200ms", "jit": "off"}
        with pytest.raises(StoreUnavailable, match="statement timeout"), repo._tx() as cur:
            cur.execute("SELECT pg_sleep(5)")
        # The settings end with the transaction: a server connection that PgBouncer lends
        # to another client next does not carry them.
        with psycopg.connect(pgbouncer.url, autocommit=True) as other:
            row = other.execute("SHOW statement_timeout").fetchone()
        assert row == ("0",)


def test_a_listener_hears_its_probe_only_in_session_pooling(pgbouncer: PgBouncer) -> None:
    with PostgresRepository(pgbouncer.url) as repo:
        listener = repo.listen()
        try:
            deadline = time.monotonic() + (2.0 if pgbouncer.mode == "transaction" else 30.0)
            while not listener.heard and (left := deadline - time.monotonic()) > 0:
                listener.wait(left)
            heard = listener.heard
        finally:
            listener.close()
    assert heard is (pgbouncer.mode == "session")


async def test_run_through_pgbouncer(
    pgbouncer: PgBouncer, mock_upstream: MockUpstream, tmp_path: Path
) -> None:
    n = 30
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(chat_line(i)) + "\n" for i in range(n)))
    out = tmp_path / "out.jsonl"
    args = [
        sys.executable, "-m", "fusillade", "run", str(src), "-o", str(out),
        "--upstream", mock_upstream.url, "--database-url", pgbouncer.url, "--concurrency", "8",
    ]  # fmt: skip
    env = {
        k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "FUSILLADE_DATABASE_URL")
    }
    with trio.fail_after(120):
        done = await trio.run_process(args, check=False, capture_stderr=True, env=env)
    stderr = done.stderr.decode()
    assert done.returncode == 0, stderr
    ids = sorted(json.loads(line)["custom_id"] for line in out.read_text().splitlines())
    assert ids == sorted(f"c{i}" for i in range(n))
    assert (tmp_path / "out.errors.jsonl").read_text() == ""


async def test_serve_through_pgbouncer(
    pgbouncer: PgBouncer,
    mock_upstream: MockUpstream,
    nursery: trio.Nursery,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.INFO, logger="fusillade")
    transaction = pgbouncer.mode == "transaction"
    if transaction:
        # The daemon's verdict comes after 0.5 s instead of 5 s.
        monkeypatch.setattr(fusillade.runtime.listen, "_PROBE_TIMEOUT", 0.5)
    monkeypatch.setenv("FUSILLADE_TEST_UPSTREAM_KEY", "sk-test")
    settings = Settings(
        database_url=pgbouncer.url,
        server=ServerSettings(host="127.0.0.1", port=0),
        upstreams={
            "mock": UpstreamSettings(mock_upstream.url, api_key_env="FUSILLADE_TEST_UPSTREAM_KEY")
        },
        default_upstream="mock",
    )
    # In session pooling a batch must start on its NOTIFY: polling alone would take 60 s.
    poll = 0.2 if transaction else 60.0
    config = attrs.evolve(settings.daemon_config(), poll_interval=poll, maintenance_interval=0.2)
    running: Running = await nursery.start(
        lambda task_status: serve(settings, daemon_config=config, task_status=task_status)
    )
    assert running.url is not None
    n = 20

    def said_no_notifications() -> int:
        return sum(NO_NOTIFICATIONS in r.getMessage() for r in caplog.records)

    async with httpx.AsyncClient(base_url=running.url + "/v1", timeout=30) as http:

        async def run_batch(first: int) -> list[str]:
            data = "".join(json.dumps(chat_line(first + i)) + "\n" for i in range(n))
            stored = await http.post(
                "/files", files={"file": ("in.jsonl", data.encode())}, data={"purpose": "batch"}
            )
            assert stored.status_code == 200, stored.text
            created = await http.post(
                "/batches",
                json={
                    "input_file_id": stored.json()["id"],
                    "endpoint": "/v1/chat/completions",
                    "completion_window": "24h",
                },
            )
            assert created.status_code == 200, created.text
            batch = await poll_until(
                lambda: http.get(f"/batches/{created.json()['id']}"),
                lambda r: r.json()["status"] in ("completed", "failed", "cancelled", "expired"),
                timeout=30,
            )
            assert batch.json()["status"] == "completed"
            assert batch.json()["request_counts"]["completed"] == n
            output = await http.get(f"/files/{batch.json()['output_file_id']}/content")
            return sorted(json.loads(line)["custom_id"] for line in output.text.splitlines())

        assert await run_batch(0) == sorted(f"c{i}" for i in range(n))
        if transaction:
            await poll_until(said_no_notifications, timeout=30)
            # The daemon goes on by polling: a batch created after it gave up on LISTEN.
            assert await run_batch(n) == sorted(f"c{n + i}" for i in range(n))
            assert said_no_notifications() == 1
        else:
            assert said_no_notifications() == 0
    running.stop()


def round_trips(repo: PostgresRepository, call: Callable[[], object]) -> list[str]:
    """What ``call`` sent to the server, one entry per round trip (libpq's protocol trace).

    A round trip ends with a simple-protocol ``Query`` or an extended-protocol ``Sync``;
    each entry is the message type and, for a ``Query``, the start of its text.
    """
    with tempfile.TemporaryFile() as trace:
        with repo.pool.connection() as conn:
            conn.pgconn.trace(trace.fileno())
            conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
        try:
            call()
        finally:
            with repo.pool.connection() as conn:
                conn.pgconn.untrace()
        trace.seek(0)
        lines = trace.read().decode().splitlines()
    sent = [line.split("\t", 3) for line in lines if line.startswith("F\t")]
    return [f[2] if f[2] == "Sync" else f[3][:40] for f in sent if f[2] in ("Query", "Sync")]


def test_the_session_settings_cost_no_round_trip_on_the_hot_path(database_url: str) -> None:
    """Claim and record: BEGIN with the settings, the statement, COMMIT (as with a bare BEGIN)."""
    now = datetime.now(UTC)
    with PostgresRepository(database_url, min_size=1, max_size=1) as repo:
        templates = [RequestTemplate(custom_id=f"r{i}", model="m", body="{}") for i in range(3)]
        f = repo.create_file("alice", "in", templates, now=now)
        batch = repo.create_batch(
            "alice", BatchSpec(f.id, "/v1/chat/completions", "24h", timedelta(hours=24)), now=now
        ).record.id
        daemon = uuid4()
        repo.register_daemon(DaemonInfo(daemon, "h", 1, "t"), now=now)
        claimed: list[ClaimedRequest] = []
        claim = round_trips(
            repo, lambda: claimed.extend(repo.claim(daemon, [(batch, "m", 3)], now=now))
        )
        assert len(claimed) == 3
        results = [c.result(ResultKind.SUCCEEDED, now, 200, "{}") for c in claimed]
        record = round_trips(repo, lambda: repo.record_results(daemon, results))
    for sent in (claim, record):
        assert len(sent) == 3, sent
        assert sent[0].startswith(' "-- begin: '), sent  # begin.sql: BEGIN and the SET LOCALs
        assert sent[1:] == ["Sync", ' "COMMIT"'], sent
