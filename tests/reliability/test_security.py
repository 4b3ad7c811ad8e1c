"""Security: request size limits on every route.

The other security properties have their tests beside the server's:
- owner isolation on every ``/v1`` route, parametrised over the route table
  (tests/server/test_auth.py: ``test_route_table_is_complete`` fails when a route is added
  without being listed; ``test_another_owners_ids_are_not_found`` and
  ``test_v1_routes_need_a_valid_key`` run over that list);
- keys absent from the database, logs, metrics, error answers and responses
  (tests/server/test_secrets.py greps all of them after a run with a failing request);
- no public bind without keys (tests/server/test_auth.py ``test_without_keys_only_loopback``,
  tests/server/test_command.py ``test_serve_refuses_a_public_host_without_keys``).

Here every route of the application (read from the app itself, so a new route cannot skip
it) gets a body far over the limits: routes that read a body answer 413 without reading
it all; routes that do not read one answer normally. None may wait for the whole body
(buffering it), none may answer 5xx, and the server stays ready.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from faultkit import raw_request
from litestar.routes import HTTPRoute

from fusillade.config import ServerSettings
from fusillade.engine import Engine
from fusillade.server.app import create_app
from fusillade.server.auth import KeyRing
from fusillade.server.context import ServerContext
from fusillade.server.serve import Running
from fusillade.store.memory import MemoryRepository

MiB = 1024 * 1024
ANNOUNCED = 1024 * MiB  # a 1 GiB body is announced...
SENT_AT_MOST = 8 * MiB  # ...and at most this much is sent (the server must not wait for more)
BODY_ROUTES = {("POST", "/v1/files"), ("POST", "/v1/batches")}


def served_routes() -> list[tuple[str, str]]:
    """(method, path template) of every route the application serves."""
    ctx = ServerContext(
        engine=Engine(MemoryRepository()), settings=ServerSettings(), keys=KeyRing(())
    )
    found = set()
    for route in create_app(ctx).routes:
        if isinstance(route, HTTPRoute):
            for method in route.methods - {"HEAD", "OPTIONS"}:
                found.add((method, route.path))
    # deletions last: they would remove the file the other routes use
    return sorted(found, key=lambda r: (r[0] == "DELETE", r))


def chunks(total: int, head: bytes = b"", size: int = 256 * 1024) -> Iterator[bytes]:
    yield head
    for _ in range(total // size):
        yield b"x" * size


UPLOAD_TYPE = "multipart/form-data; boundary=bnd"
UPLOAD_HEAD = b'--bnd\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n\r\n'


@pytest.fixture
async def ids(api: httpx.AsyncClient) -> dict[str, str]:
    line = {
        "custom_id": "a",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "m", "messages": []},
    }
    uploaded = await api.post(
        "/v1/files",
        files={"file": ("in.jsonl", json.dumps(line).encode() + b"\n")},
        data={"purpose": "batch"},
    )
    assert uploaded.status_code == 200, uploaded.text
    file_id = uploaded.json()["id"]
    body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions"}
    created = await api.post("/v1/batches", json={**body, "completion_window": "24h"})
    assert created.status_code == 200, created.text
    return {"file_id": file_id, "batch_id": created.json()["id"]}


async def test_every_route_refuses_or_ignores_an_oversized_body(
    api_server: Running, api: httpx.AsyncClient, ids: dict[str, str]
) -> None:
    assert api_server.url is not None
    routes = served_routes()
    assert len(routes) >= 17, routes  # the /v1 routes and the operational ones
    assert set(routes) >= BODY_ROUTES
    seen = []
    for method, template in routes:
        path = template.replace("{file_id:str}", ids["file_id"])
        path = path.replace("{batch_id:str}", ids["batch_id"])
        path = path.replace("{path:str}", "openapi.json")  # Litestar's /docs/{path}
        assert "{" not in path, path
        for announced in (True, False):  # content-length, then chunked
            upload = (method, template) == ("POST", "/v1/files")
            content_type = UPLOAD_TYPE if upload else "application/json"
            headers = [("content-type", content_type)]
            if announced:
                headers.append(("content-length", str(ANNOUNCED)))
            body = chunks(SENT_AT_MOST, UPLOAD_HEAD if upload else b"")
            status, answer, sent = await raw_request(api_server.url, method, path, headers, body)
            seen.append((method, path, announced, status, sent))
            assert 0 < status < 500, (method, path, announced, status, answer[:200])
            if (method, template) in BODY_ROUTES:
                assert status == 413, (method, path, announced, status, answer[:200])
                code = json.loads(answer)["error"]["code"]
                assert code in ("request_too_large", "file_too_large", "line_too_long"), code
        ready = await api.get("/readyz")
        assert ready.status_code == 200, (method, path, ready.text)
    refused = sum(1 for _, _, _, status, _ in seen if status == 413)
    print(f"{len(seen)} oversized requests over {len(routes)} routes, {refused} refused (413)")
