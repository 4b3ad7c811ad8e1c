"""OpenAI's ``expires_after`` on uploads and ``output_expires_after`` on batches over real
HTTP and PostgreSQL: the objects show ``expires_at``; wrong values are 400 with a param;
an expired upload answers 404 after one maintenance round."""

from __future__ import annotations

import io
from typing import Any

import httpx
import openai
import pytest
import trio
from helpers import poll_until
from serverkit import chat_line, jsonl

from fusillade.server.serve import Running

DATA = jsonl(chat_line(f"c{i}") for i in range(2))


async def test_the_sdk_sets_expiries_and_the_objects_show_them(
    client: openai.AsyncOpenAI,
) -> None:
    f = await client.files.create(
        file=("in.jsonl", io.BytesIO(DATA)),
        purpose="batch",
        expires_after={"anchor": "created_at", "seconds": 3600},
    )
    assert f.expires_at == f.created_at + 3600
    again = await client.files.retrieve(f.id)
    assert again.expires_at == f.expires_at
    plain = await client.files.create(file=("in.jsonl", io.BytesIO(DATA)), purpose="batch")
    assert plain.expires_at is None
    b = await client.batches.create(
        input_file_id=plain.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        output_expires_after={"anchor": "created_at", "seconds": 7200},
    )
    done = await poll_until(
        lambda: client.batches.retrieve(b.id), lambda x: x.status == "completed"
    )
    assert done.output_file_id is not None
    out = await client.files.retrieve(done.output_file_id)
    assert out.expires_at == b.created_at + 7200


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        (
            {"expires_after[anchor]": "created_at", "expires_after[seconds]": "3599"},
            "expires_after.seconds",
        ),
        (
            {"expires_after[anchor]": "created_at", "expires_after[seconds]": "2592001"},
            "expires_after.seconds",
        ),
        (
            {"expires_after[anchor]": "created_at", "expires_after[seconds]": "soon"},
            "expires_after.seconds",
        ),
        ({"expires_after[anchor]": "created_at"}, "expires_after.seconds"),
        (
            {"expires_after[anchor]": "last_active_at", "expires_after[seconds]": "3600"},
            "expires_after.anchor",
        ),
        ({"expires_after[seconds]": "3600"}, "expires_after.anchor"),
    ],
)
async def test_a_wrong_upload_expiry_is_refused(
    http: httpx.AsyncClient, fields: dict[str, str], param: str
) -> None:
    r = await http.post(
        "/v1/files",
        files={"file": ("in.jsonl", DATA, "application/jsonl")},
        data={"purpose": "batch", **fields},
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    listed = await http.get("/v1/files")
    assert listed.json()["data"] == []  # nothing stored


@pytest.mark.parametrize(
    ("value", "param"),
    [
        ({"anchor": "created_at", "seconds": 60}, "output_expires_after.seconds"),
        ({"anchor": "created_at", "seconds": 2592001}, "output_expires_after.seconds"),
        ({"anchor": "created_at", "seconds": "3600"}, "output_expires_after.seconds"),
        ({"anchor": "created_at", "seconds": True}, "output_expires_after.seconds"),
        ({"anchor": "created_at", "seconds": 3600.5}, "output_expires_after.seconds"),
        ({"anchor": "completed_at", "seconds": 3600}, "output_expires_after.anchor"),
        ({"seconds": 3600}, "output_expires_after.anchor"),
    ],
)
async def test_a_wrong_output_expiry_is_refused(
    http: httpx.AsyncClient, value: dict[str, Any], param: str
) -> None:
    f = await http.post(
        "/v1/files",
        files={"file": ("in.jsonl", DATA, "application/jsonl")},
        data={"purpose": "batch"},
    )
    body = {
        "input_file_id": f.json()["id"],
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
        "output_expires_after": value,
    }
    r = await http.post("/v1/batches", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    assert (await http.get("/v1/batches")).json()["data"] == []


async def test_an_expired_upload_answers_404_after_a_maintenance_round(
    server: Running, http: httpx.AsyncClient, database_url: str
) -> None:
    import psycopg

    r = await http.post(
        "/v1/files",
        files={"file": ("in.jsonl", DATA, "application/jsonl")},
        data={
            "purpose": "batch",
            "expires_after[anchor]": "created_at",
            "expires_after[seconds]": "3600",
        },
    )
    file_id = r.json()["id"]
    assert (await http.get(f"/v1/files/{file_id}")).status_code == 200
    # an hour later, as the database's clock would say it
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE files SET expires_at = now() - interval '1 second'")

        def templates() -> int:
            row = conn.execute("SELECT count(*) FROM request_templates").fetchone()
            assert row is not None
            return int(row[0])

        await poll_until(lambda: trio.to_thread.run_sync(templates), lambda n: n == 0)
    assert (await http.get(f"/v1/files/{file_id}")).status_code == 404
    assert (await http.get(f"/v1/files/{file_id}/content")).status_code == 404
