"""The extensions: the per-request listing and retry (and its 409), plus readiness."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import httpx
import pytest
import trio
from helpers import claim_by_model, poll_until
from serverkit import StartServer, chat_line, jsonl, wait_status_json

from fusillade.errors import StoreUnavailable
from fusillade.mock_upstream import Behaviour, MockUpstream
from fusillade.server.serve import Running, serve
from fusillade.store.interface import DaemonInfo
from fusillade.store.memory import MemoryRepository


@pytest.fixture
async def api(server: Running) -> AsyncIterator[httpx.AsyncClient]:
    assert server.url is not None
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
        yield c


async def make_batch(api: httpx.AsyncClient, lines: list[dict[str, object]]) -> str:
    uploaded = await api.post(
        "/v1/files", files={"file": ("in.jsonl", jsonl(lines))}, data={"purpose": "batch"}
    )
    assert uploaded.status_code == 200, uploaded.text
    body = {"input_file_id": uploaded.json()["id"], "endpoint": "/v1/chat/completions"}
    created = await api.post("/v1/batches", json={**body, "completion_window": "24h"})
    assert created.status_code == 200, created.text
    return str(created.json()["id"])


async def test_requests_listing_pages_and_filters(
    api: httpx.AsyncClient, mock_upstream: MockUpstream
) -> None:
    mock_upstream.config.per_model["bad"] = Behaviour(status=400)
    lines = [chat_line(f"r{i}", model="bad" if i % 3 == 0 else "m") for i in range(10)]
    batch_id = await make_batch(api, lines)
    batch = await wait_status_json(api, batch_id, "completed")

    seen: list[dict[str, object]] = []
    after = None
    while True:
        query = "limit=4" + (f"&after={after}" if after else "")
        page = (await api.get(f"/v1/batches/{batch_id}/requests?{query}")).json()
        assert page["object"] == "list"
        seen.extend(page["data"])
        if not page["has_more"]:
            break
        after = page["last_id"]
        assert after == page["data"][-1]["id"]
    assert [r["custom_id"] for r in seen] == [f"r{i}" for i in range(10)]  # input order
    for request in seen:
        assert str(request["id"]).startswith("batch_req_")
        assert request["object"] == "batch.request"
        assert request["model"] in ("m", "bad")
        assert request["created_at"] == batch["created_at"]
        assert request["completed_at"] is not None
        assert request["attempts"] == 1
    failed = [r for r in seen if r["status"] == "failed"]
    assert {r["custom_id"] for r in failed} == {"r0", "r3", "r6", "r9"}
    for request in failed:
        assert request["response_status"] == 400
        assert request["error"] == {
            "code": "upstream_error",
            "message": request["error"]["message"],
        }  # type: ignore[index]

    only = (await api.get(f"/v1/batches/{batch_id}/requests?status=failed&limit=100")).json()
    assert [r["custom_id"] for r in only["data"]] == ["r0", "r3", "r6", "r9"]
    both = await api.get(f"/v1/batches/{batch_id}/requests?status=failed&status=completed")
    assert len(both.json()["data"]) == 10
    none = await api.get(f"/v1/batches/{batch_id}/requests?status=pending")
    assert none.json() == {
        "object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False
    }  # fmt: skip


async def wait_failed(api: httpx.AsyncClient, batch_id: str, n: int) -> dict[str, Any]:
    async def batch() -> dict[str, Any]:
        found: dict[str, Any] = (await api.get(f"/v1/batches/{batch_id}")).json()
        return found

    return await poll_until(batch, lambda b: b["request_counts"]["failed"] == n)


async def test_errors_tell_retries_waiting_the_latest_error_and_the_kinds(
    api: httpx.AsyncClient, mock_upstream: MockUpstream
) -> None:
    mock_upstream.config.per_model["bad"] = Behaviour(status=400)
    mock_upstream.config.per_model["limited"] = Behaviour(rate_limit_attempts=99, retry_after=60)
    lines = [chat_line(f"b{i}", model="bad") for i in range(3)]
    lines += [chat_line("ok", model="m"), chat_line("l", model="limited")]
    batch_id = await make_batch(api, lines)

    async def errors() -> dict[str, Any]:
        found: dict[str, Any] = (await api.get(f"/v1/batches/{batch_id}/errors")).json()
        return found

    # the 429 waits a minute for its retry: the batch stays in progress meanwhile
    trouble = await poll_until(
        errors,
        lambda e: e["retries_waiting"] == 1 and (e["latest_error"] or {}).get("kind") == "http 429",
    )
    assert trouble["object"] == "batch.errors"
    assert (trouble["rate_limited"], trouble["retries_waiting_capped"]) == (1, False)
    assert trouble["latest_error"]["reason"] == "http_status"  # retries wait: theirs
    assert trouble["latest_error"]["status"] == 429
    assert (trouble["kinds"], trouble["kinds_scanned"]) == (None, None)  # not asked for
    batch = await wait_failed(api, batch_id, 3)
    assert batch["status"] == "in_progress"
    summary = (await api.get(f"/v1/batches/{batch_id}/errors?kinds=true")).json()
    assert summary["kinds"] == [
        {"kind": "http 400", "reason": "http_status", "status": 400, "count": 3,
         "example": "mock status 400"},
    ]  # fmt: skip
    assert (summary["kinds_scanned"], summary["kinds_capped"]) == (3, False)
    missing = await api.get(f"/v1/batches/batch_{uuid4().hex}/errors")
    assert missing.status_code == 404
    await api.post(f"/v1/batches/{batch_id}/cancel")


async def test_retry_while_cancelling_is_a_conflict(
    start_server: StartServer, mock_upstream: MockUpstream
) -> None:
    # No daemon in the server: a stand-in daemon claims the requests and never finishes,
    # so the cancelled batch stays "cancelling".
    running = await start_server(mock_upstream.url, run_daemon=False)
    assert running.url is not None
    async with httpx.AsyncClient(base_url=running.url, timeout=30) as api:
        batch_id = await make_batch(api, [chat_line("a"), chat_line("b")])
        repo = running.repo
        daemon_id = uuid4()
        now = datetime.now(UTC)

        def claim() -> int:
            repo.register_daemon(DaemonInfo(daemon_id, "test", 1, "0"), now=now)
            return len(claim_by_model(repo, daemon_id, {"m": 10}, now=datetime.now(UTC)))

        assert await trio.to_thread.run_sync(claim) == 2
        cancelled = await api.post(f"/v1/batches/{batch_id}/cancel")
        assert cancelled.status_code == 200
        assert cancelled.json()["status"] == "cancelling"
        assert cancelled.json()["cancelling_at"] is not None
        retried = await api.post(f"/v1/batches/{batch_id}/retry")
        assert retried.status_code == 409, retried.text
        assert retried.json()["error"]["code"] == "conflict"
        # The stand-in daemon goes away: its rows are released and the batch settles.
        await trio.to_thread.run_sync(lambda: repo.release(daemon_id, now=datetime.now(UTC)))
        await trio.to_thread.run_sync(lambda: repo.sweep(now=datetime.now(UTC)))
        done = await wait_status_json(api, batch_id, "cancelled")
        assert done["request_counts"] == {"total": 2, "completed": 0, "failed": 2}
        again = await api.post(f"/v1/batches/{batch_id}/retry?include_cancelled=true")
        assert again.status_code == 200, again.text
        assert again.json()["status"] == "in_progress"
        assert again.json()["request_counts"] == {"total": 2, "completed": 0, "failed": 0}


class UnreachableRepository(MemoryRepository):
    def ping(self) -> None:
        raise StoreUnavailable("database unavailable: test")


async def test_readiness_is_false_while_the_database_is_unreachable(
    nursery: trio.Nursery,
) -> None:
    from serverkit import settings_for

    settings = settings_for("unused", None)
    running: Running = await nursery.start(
        lambda task_status: serve(
            settings,
            repository=UnreachableRepository(),
            run_daemon=False,
            task_status=task_status,
        )
    )
    assert running.url is not None
    async with httpx.AsyncClient(base_url=running.url) as c:
        ready = await c.get("/readyz")
        assert ready.status_code == 503
        assert ready.json() == {"status": "unavailable", "database": False, "daemon": None}
        assert (await c.get("/healthz")).status_code == 200
    running.stop()
