"""Web pages cannot drive a server that has no keys (DNS rebinding, CSRF).

Without keys the server listens on loopback only, but a browser on the same machine
reaches loopback for any page it shows: a page can make it POST a form or ``text/plain``
anywhere (CSRF), and a page on a name the attacker re-points at 127.0.0.1 can even read
the answers (DNS rebinding). The server refuses a ``Host`` that is not one of its own
names, an ``Origin`` of another page, and a JSON body not sent as ``application/json``
(which no page can send cross-origin without the server's consent).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from litestar.handlers import HTTPRouteHandler
from serverkit import StartServer, chat_line, jsonl, raw_post

from fusillade.config import ApiKey, ServerSettings
from fusillade.engine import Engine
from fusillade.server.app import create_app
from fusillade.server.auth import KeyRing
from fusillade.server.context import ServerContext
from fusillade.server.intake import takes_json
from fusillade.server.serve import Running
from fusillade.store.memory import MemoryRepository


def port_of(running: Running) -> int:
    assert running.url is not None
    return int(running.url.rsplit(":", 1)[1])


@pytest.fixture
async def plain(server: Running) -> AsyncIterator[httpx.AsyncClient]:
    assert server.url is not None
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
        yield c


BOUNDARY = "csrf-form"
FORM = (
    (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n\r\n'
    ).encode()
    + jsonl([chat_line("a")])
    + f"\r\n--{BOUNDARY}--\r\n".encode()
)


async def upload(
    running: Running, *, host: str | None = None, origin: str | None = None
) -> tuple[int, dict[str, Any]]:
    """What a page's form POST of a file sends (a refusal may come before the body is read,
    so over a bare connection that tolerates an early answer)."""
    assert running.url is not None
    headers = [("content-type", f"multipart/form-data; boundary={BOUNDARY}")]
    headers.append(("content-length", str(len(FORM))))
    if origin is not None:
        headers.append(("origin", origin))
    status, body = await raw_post(running.url, "/v1/files", headers, [FORM], host=host)
    return status, json.loads(body)


def json_routes() -> list[tuple[str, str]]:
    """(method, path) of every route whose body Litestar would decode as JSON."""
    ctx = ServerContext(
        engine=Engine(MemoryRepository()), settings=ServerSettings(), keys=KeyRing(())
    )
    found = []
    for route in create_app(ctx).routes:
        for handler in getattr(route, "route_handlers", []):
            if isinstance(handler, HTTPRouteHandler) and takes_json(handler):
                found.extend((m, route.path) for m in handler.http_methods)
    return sorted(found)


def test_the_json_routes_are_the_ones_with_json_bodies() -> None:
    assert json_routes() == [("POST", "/v1/batches")]


FOREIGN_HOSTS = [
    "evil.example",  # a rebinding page, default port
    "evil.example:{port}",
    "localhost.evil.example:{port}",
    "127.0.0.1.nip.io:{port}",
    "evil.example:{port}@127.0.0.1",
    "",
]
OWN_HOSTS = [
    "127.0.0.1:{port}",
    "localhost:{port}",
    "[::1]:{port}",
    "LocalHost.:{port}",
    "localhost",
]


async def test_a_keyless_server_refuses_a_foreign_host_header(
    server: Running, plain: httpx.AsyncClient
) -> None:
    port = port_of(server)
    for template in FOREIGN_HOSTS:
        host = template.format(port=port)
        for method, path in [("GET", "/v1/files"), ("GET", "/metrics"), ("GET", "/healthz")]:
            response = await plain.request(method, path, headers={"host": host})
            assert response.status_code == 403, (host, path, response.text)
            error = response.json()["error"]
            assert error["code"] == "host_not_allowed", error
        status, answer = await upload(server, host=host)
        assert status == 403, (host, answer)
    assert (await plain.get("/v1/files")).json()["data"] == []  # nothing was stored
    for template in OWN_HOSTS:
        host = template.format(port=port)
        response = await plain.get("/v1/files", headers={"host": host})
        assert response.status_code == 200, (host, response.text)


async def test_a_keyless_server_refuses_requests_from_other_web_pages(
    server: Running, plain: httpx.AsyncClient
) -> None:
    port = port_of(server)
    for origin in [
        "http://evil.example",
        f"http://evil.example:{port}",
        "null",  # sandboxed frames, file:// pages
        "http://localhost:3000",  # another local app is another origin
        f"https://127.0.0.1:{port + 1}",
    ]:
        status, answer = await upload(server, origin=origin)  # a form POST: no preflight
        assert status == 403, (origin, answer)
        assert answer["error"]["code"] == "origin_not_allowed"
    assert (await plain.get("/v1/files")).json()["data"] == []
    status, answer = await upload(server, origin=f"http://127.0.0.1:{port}")
    assert status == 200, answer


async def test_json_routes_refuse_bodies_a_page_can_send_without_asking(
    server: Running, plain: httpx.AsyncClient
) -> None:
    status, uploaded = await upload(server)
    assert status == 200, uploaded
    body = json.dumps(
        {
            "input_file_id": uploaded["id"],
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
        }
    )
    for method, path in json_routes():
        for content_type in [
            "text/plain",
            "text/plain;charset=UTF-8",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/json; charset=latin-1",
            None,
        ]:
            headers = {"content-type": content_type} if content_type else {}
            response = await plain.request(method, path, content=body, headers=headers)
            assert response.status_code == 415, (path, content_type, response.text)
            assert response.json()["error"]["code"] == "unsupported_media_type"
    assert (await plain.get("/v1/batches")).json()["data"] == []
    for content_type in ["application/json", "Application/JSON; charset=utf-8"]:
        created = await plain.post(
            "/v1/batches", content=body, headers={"content-type": content_type}
        )
        assert created.status_code == 200, (content_type, created.text)


async def test_allowed_hosts_admit_the_names_and_pages_listed(start_server: StartServer) -> None:
    running = await start_server(allowed_hosts=("api.internal", "ui.internal:3000"))
    port = port_of(running)
    assert running.url is not None
    async with httpx.AsyncClient(base_url=running.url) as api:
        for host, status in [
            (f"api.internal:{port}", 200),
            ("api.internal", 200),
            ("ui.internal:3000", 200),
            ("ui.internal:3001", 403),
            (f"localhost:{port}", 200),
            ("evil.example", 403),
        ]:
            response = await api.get("/v1/files", headers={"host": host})
            assert response.status_code == status, (host, response.text)
        for origin, status in [("http://ui.internal:3000", 200), ("http://ui.internal:4000", 403)]:
            response = await api.get("/v1/files", headers={"origin": origin})
            assert response.status_code == status, (origin, response.text)


async def test_with_keys_the_host_is_not_checked_unless_configured(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A page cannot send the bearer key (that needs a CORS preflight the server never
    # answers), so with keys the Host and Origin do not matter.
    monkeypatch.setenv("KEY_ALICE", "sk-alice")
    running = await start_server(api_keys=[ApiKey("KEY_ALICE", "alice")])
    assert running.url is not None
    headers = {"authorization": "Bearer sk-alice", "host": "api.example.com"}
    async with httpx.AsyncClient(base_url=running.url, headers=headers) as api:
        assert (await api.get("/v1/files")).status_code == 200
        assert (await api.get("/v1/files", headers={"origin": "http://x"})).status_code == 200
