"""Database outage: PostgreSQL stops for 10 s in the middle of a batch, then starts again.

Required: the daemon and the server stay up (readiness false meanwhile), the batch
completes, nothing is lost. The test runs its own embedded PostgreSQL in a temporary
directory (never the shared server): stopping it is a fast shutdown, so every connection
of the pool and the LISTEN connection breaks, as in a real failover or restart.

The server (API and daemon in one task tree, ``fusillade.server.serve.serve``) runs in this
process, on the repository it opens itself, exactly as ``fusillade serve`` would.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import attrs
import httpx
import psycopg
import pytest
import trio
from helpers import poll_until

from fusillade.config import ServerSettings, Settings, UpstreamSettings
from fusillade.embedded import EmbeddedPostgres, start_embedded
from fusillade.mock_upstream import Behaviour, MockUpstream
from fusillade.server.serve import Running, serve
from fusillade.store.migrate import migrate

pytestmark = pytest.mark.slow

N = 600
OUTAGE = 10.0


@attrs.define
class Cluster:
    """An embedded PostgreSQL the test may stop and start again (same data directory)."""

    data_dir: Path
    server: EmbeddedPostgres | None = None

    def start(self) -> None:
        self.server = start_embedded(self.data_dir)

    def stop(self) -> None:
        assert self.server is not None
        self.server.stop()
        self.server = None

    def url_for(self, database: str) -> str:
        assert self.server is not None
        return psycopg.conninfo.make_conninfo(self.server.url, dbname=database)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path / "pg")
    c.start()
    try:
        yield c
    finally:
        if c.server is not None:
            c.stop()


def chat_line(i: int) -> bytes:
    body = {"model": "m", "messages": [{"role": "user", "content": f"hi {i}"}]}
    line = {"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}
    return json.dumps(line).encode() + b"\n"


@attrs.define
class Probe:
    """Readiness answers seen while polling: (seconds since the stop when the answer
    came, status or None for no answer within the client's timeout)."""

    seen: list[tuple[float, int | None]] = attrs.Factory(list)
    slowest: float = 0.0

    def first(self, status: int | None) -> float | None:
        return next((t for t, s in self.seen if s == status), None)


async def test_postgres_down_10s_mid_batch_loses_nothing(
    cluster: Cluster,
    mock_upstream: MockUpstream,
    nursery: trio.Nursery,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    url = cluster.url_for("postgres")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE DATABASE outage")
    url = cluster.url_for("outage")
    await trio.to_thread.run_sync(migrate, url)
    mock_upstream.config.default = Behaviour(latency=0.02)

    settings = Settings(
        database_url=url,
        server=ServerSettings(host="127.0.0.1", port=0),
        upstreams={"mock": UpstreamSettings(mock_upstream.url)},
        default_upstream="mock",
    )
    config = attrs.evolve(
        settings.daemon_config(),
        default_concurrency=8,
        # Long: after the outage, only a working LISTEN wakes the daemon for a new batch.
        poll_interval=30.0,
        heartbeat_interval=0.5,
        maintenance_interval=0.5,
        cancel_check_interval=0.2,
        # Short: waits for a database thread (all blocked on the pool in the outage) time
        # out, and the loops and the writer must retry them.
        db_call_timeout=3.0,
    )
    served = trio.Event()

    async def run_server(task_status: trio.TaskStatus[Running]) -> None:
        await serve(settings, daemon_config=config, migrate=False, task_status=task_status)
        served.set()

    running: Running = await nursery.start(run_server)
    assert running.url is not None and running.daemon is not None
    async with httpx.AsyncClient(base_url=running.url, timeout=30) as api:
        content = b"".join(chat_line(i) for i in range(N))
        uploaded = await api.post(
            "/v1/files", files={"file": ("in.jsonl", content)}, data={"purpose": "batch"}
        )
        assert uploaded.status_code == 200, uploaded.text
        body = {"input_file_id": uploaded.json()["id"], "endpoint": "/v1/chat/completions"}
        created = await api.post("/v1/batches", json={**body, "completion_window": "24h"})
        assert created.status_code == 200, created.text
        batch_id = created.json()["id"]
        assert (await api.get("/readyz")).status_code == 200

        with trio.fail_after(60):
            await mock_upstream.wait_until(lambda s: s.total >= N // 4)
        sent_before = mock_upstream.stats.total
        await trio.to_thread.run_sync(cluster.stop)
        stopped = trio.current_time()
        probe = Probe()

        async def ready() -> int | None:
            asked = trio.current_time()
            try:
                status: int | None = (await api.get("/readyz", timeout=10)).status_code
            except httpx.TimeoutException:
                status = None
            probe.seen.append((trio.current_time() - stopped, status))
            probe.slowest = max(probe.slowest, trio.current_time() - asked)
            return status

        # An API call during the outage (answered when it is, meanwhile the probe goes on).
        api_answered: list[tuple[int, float]] = []

        async def call_api() -> None:
            asked = trio.current_time()
            status = (await api.get(f"/v1/batches/{batch_id}", timeout=60)).status_code
            api_answered.append((status, trio.current_time() - asked))

        nursery.start_soon(call_api)
        # Down for OUTAGE seconds: readiness is polled all along; liveness must hold.
        while trio.current_time() - stopped < OUTAGE:
            await ready()
            assert (await api.get("/healthz")).status_code == 200
            await trio.sleep(0.25)  # the probes' cadence over the fixed outage, not a wait
        sent_during = mock_upstream.stats.total - sent_before
        await trio.to_thread.run_sync(cluster.start)
        restarted = trio.current_time() - stopped
        await poll_until(ready, lambda status: status == 200, timeout=60, interval=0.1)
        recovered = trio.current_time() - stopped - restarted

        # Ready stays ready: no stale pooled connection answers 503 after the recovery.
        after = [(await api.get(f"/v1/batches/{batch_id}")).status_code for _ in range(20)]
        after += [await ready() for _ in range(5)]
        assert set(after) == {200}, after

        # Every probe during the outage answered 503, each within READY_TIMEOUT (5 s).
        unready = probe.first(503)
        assert unready is not None and unready < 6.0, probe.seen
        assert all(s == 503 for t, s in probe.seen if t < restarted), probe.seen
        assert probe.slowest < 6.0, probe.slowest
        assert not served.is_set(), "the server stopped during the outage"

        answer = await poll_until(
            lambda: api.get(f"/v1/batches/{batch_id}"),
            lambda r: r.json()["status"] == "completed",
            timeout=60,
            interval=0.1,
        )
        batch = answer.json()
        finished = trio.current_time() - stopped - restarted
        assert batch["request_counts"] == {"total": N, "completed": N, "failed": 0}
        output = await api.get(f"/v1/files/{batch['output_file_id']}/content")
        ids = Counter(json.loads(line)["custom_id"] for line in output.text.splitlines())
        assert set(ids) == {f"c{i}" for i in range(N)} and max(ids.values()) == 1
        assert running.daemon.healthy
        # the call made during the outage has its answer
        await poll_until(lambda: api_answered, timeout=40, interval=0.1)
        assert api_answered[0][0] in (200, 503), api_answered

        # LISTEN works again: a new batch starts at once, not after the 30 s poll interval.
        content = b"".join(chat_line(i) for i in range(5))
        uploaded = await api.post(
            "/v1/files", files={"file": ("again.jsonl", content)}, data={"purpose": "batch"}
        )
        body = {"input_file_id": uploaded.json()["id"], "endpoint": "/v1/chat/completions"}
        before = mock_upstream.stats.total
        created = await api.post("/v1/batches", json={**body, "completion_window": "24h"})
        assert created.status_code == 200, created.text
        asked = trio.current_time()
        with trio.fail_after(5):
            await mock_upstream.wait_until(lambda s: s.total > before)
        woke = trio.current_time() - asked
        with trio.fail_after(30):
            await mock_upstream.wait_until(lambda s: len(s.by_request_id) == N + 5)

    seen = mock_upstream.stats.by_request_id
    resent = sum(seen.values()) - N - 5
    assert len(seen) == N + 5
    # Nothing sent twice: the daemon lived through it (stale_after 30 s > the outage), and
    # results waiting to be written were retried until they committed, never re-sent.
    assert resent == 0, resent
    running.stop()
    with trio.fail_after(30):
        await served.wait()
    warnings = Counter(r.name for r in caplog.records if r.levelno >= logging.WARNING)
    print(
        f"outage {OUTAGE:.0f} s; first readyz 503 {unready:.2f} s after the stop, "
        f"{len(probe.seen)} probes, slowest {probe.slowest:.2f} s; ready again "
        f"{recovered:.2f} s after the restart; batch done {finished:.2f} s after it; "
        f"sent during the outage {sent_during}; sent twice {resent}; API call during the "
        f"outage {api_answered}; new batch woke the daemon in {woke:.3f} s; "
        f"warnings {dict(warnings)}"
    )
