"""Keys never leak: after a full run, the upstream key and the API key appear nowhere in the
database, the logs, the metrics or any API answer."""

from __future__ import annotations

import logging

import httpx
import psycopg
import pytest
import trio
from psycopg import sql
from serverkit import UPSTREAM_KEY, StartServer, chat_line, jsonl, wait_status_json

from fusillade.config import ApiKey
from fusillade.mock_upstream import Behaviour, MockUpstream

API_KEY = "sk-fusillade-client-KEY-77aa55cc33ee"


def database_text(url: str) -> str:
    """Every row of every table of the public schema, as text."""
    out = []
    with psycopg.connect(url) as conn:
        tables = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename"
        ).fetchall()
        assert len(tables) >= 4
        for (table,) in tables:
            query = sql.SQL("SELECT t::text FROM {} t").format(sql.Identifier(table))
            out.extend(str(row[0]) for row in conn.execute(query))
    return "\n".join(out)


async def test_keys_appear_nowhere(
    start_server: StartServer,
    mock_upstream: MockUpstream,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("FUSILLADE_TEST_KEY_CLIENT", API_KEY)
    running = await start_server(
        mock_upstream.url, api_keys=[ApiKey("FUSILLADE_TEST_KEY_CLIENT", "client")]
    )
    assert running.url is not None
    mock_upstream.config.per_model["bad"] = Behaviour(status=401)
    answers: list[str] = []

    async def record(response: httpx.Response) -> None:
        await response.aread()
        answers.append(str(response.headers) + "\n" + response.text)

    headers = {"authorization": f"Bearer {API_KEY}"}
    async with httpx.AsyncClient(
        base_url=running.url, headers=headers, event_hooks={"response": [record]}, timeout=30
    ) as api:
        content = jsonl([chat_line("ok1"), chat_line("ok2"), chat_line("ko", model="bad")])
        uploaded = await api.post(
            "/v1/files", files={"file": ("in.jsonl", content)}, data={"purpose": "batch"}
        )
        file_id = uploaded.json()["id"]
        body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions"}
        created = await api.post("/v1/batches", json={**body, "completion_window": "24h"})
        batch_id = created.json()["id"]
        batch = await wait_status_json(api, batch_id, "completed")
        assert batch["request_counts"] == {"total": 3, "completed": 2, "failed": 1}
        for path in (
            f"/v1/files/{batch['output_file_id']}/content",
            f"/v1/files/{batch['error_file_id']}/content",
            f"/v1/files/{file_id}/content",
            f"/v1/batches/{batch_id}/requests",
            "/v1/files",
            "/v1/batches",
            "/metrics",
            "/readyz",
            "/openapi.json",
        ):
            assert (await api.get(path)).status_code == 200, path
        await api.post(f"/v1/batches/{batch_id}/retry")
        await api.get("/v1/files", headers={"authorization": "Bearer wrong"})
        await api.post("/v1/batches", json={"input_file_id": "nope"})

    # The upstream did get the key: the test would prove nothing otherwise.
    assert mock_upstream.stats.total >= 3
    assert mock_upstream.stats.last_headers["authorization"] == f"Bearer {UPSTREAM_KEY}"

    running.stop()
    logs = "\n".join(f"{r.getMessage()} {r.args!r} {r.exc_text or ''}" for r in caplog.records)
    assert caplog.records, "nothing was logged: the check would be empty"
    stored = await trio.to_thread.run_sync(database_text, database_url)
    assert "ok1" in stored  # the dump holds the run
    for secret in (UPSTREAM_KEY, API_KEY):
        assert secret not in stored
        assert secret not in logs
        for answer in answers:
            assert secret not in answer
