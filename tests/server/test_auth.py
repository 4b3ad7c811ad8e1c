"""Bearer keys and owner isolation: another owner's ids answer 404 on every route."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import attrs
import httpx
import pytest
from litestar.routes import HTTPRoute
from serverkit import StartServer, chat_line, jsonl, wait_status_json

from fusillade.config import ApiKey, ServerSettings
from fusillade.engine import Engine
from fusillade.errors import ConfigError
from fusillade.mock_upstream import Behaviour, MockUpstream
from fusillade.server.app import create_app
from fusillade.server.auth import KeyRing, check_bind, is_loopback, load_keys
from fusillade.server.context import ServerContext
from fusillade.server.serve import Running
from fusillade.store.memory import MemoryRepository

KEYS = {"alice": "sk-alice-0123456789", "bob": "sk-bob-9876543210"}
API_KEYS = [ApiKey(f"FUSILLADE_TEST_KEY_{o.upper()}", o) for o in KEYS]


@attrs.frozen
class Route:
    method: str
    path: str  # with {file}, {output}, {error}, {batch}, {request} placeholders
    json: dict[str, Any] | None = None

    def url(self, ids: dict[str, str]) -> str:
        return self.path.format(**ids)

    def body(self, ids: dict[str, str]) -> dict[str, Any] | None:
        if self.json is None:
            return None
        return json.loads(json.dumps(self.json).replace("{file}", ids["file"]))


# Every /v1 route that takes an id (test_route_table_is_complete keeps this complete).
ID_ROUTES = [
    Route("GET", "/v1/files/{file}"),
    Route("GET", "/v1/files/{output}"),
    Route("GET", "/v1/files/{error}"),
    Route("GET", "/v1/files/{file}/content"),
    Route("GET", "/v1/files/{output}/content"),
    Route("GET", "/v1/files/{error}/content"),
    Route("DELETE", "/v1/files/{file}"),
    Route("DELETE", "/v1/files/{output}"),
    Route("GET", "/v1/batches/{batch}"),
    Route("POST", "/v1/batches/{batch}/cancel"),
    Route("POST", "/v1/batches/{batch}/retry"),
    Route("GET", "/v1/batches/{batch}/requests"),
    Route("GET", "/v1/batches/{batch}/errors"),
    Route("GET", "/v1/batches/{batch}/results"),
    Route(
        "POST",
        "/v1/batches",
        {"input_file_id": "{file}", "endpoint": "/v1/chat/completions", "completion_window": "24h"},
    ),
]
LIST_ROUTES = [Route("GET", "/v1/files"), Route("GET", "/v1/batches"), Route("POST", "/v1/files")]
PLACEHOLDER_PATHS = {
    "/v1/files/{file_id:str}": "/v1/files/{file}",
    "/v1/files/{file_id:str}/content": "/v1/files/{file}/content",
    "/v1/batches/{batch_id:str}": "/v1/batches/{batch}",
    "/v1/batches/{batch_id:str}/cancel": "/v1/batches/{batch}/cancel",
    "/v1/batches/{batch_id:str}/retry": "/v1/batches/{batch}/retry",
    "/v1/batches/{batch_id:str}/requests": "/v1/batches/{batch}/requests",
    "/v1/batches/{batch_id:str}/errors": "/v1/batches/{batch}/errors",
    "/v1/batches/{batch_id:str}/results": "/v1/batches/{batch}/results",
}


def test_route_table_is_complete() -> None:
    """A new /v1 route must be added to ID_ROUTES or LIST_ROUTES (so it is tested)."""
    ctx = ServerContext(
        engine=Engine(MemoryRepository()), settings=ServerSettings(), keys=KeyRing(())
    )
    app = create_app(ctx)
    served = set()
    for route in app.routes:
        if isinstance(route, HTTPRoute) and route.path.startswith("/v1"):
            for method in route.methods - {"HEAD", "OPTIONS"}:
                served.add((method, route.path))
    tested = {(r.method, r.path) for r in LIST_ROUTES}
    for r in ID_ROUTES:
        generic = r.path.replace("{output}", "{file}").replace("{error}", "{file}")
        tested.add((r.method, generic))
    expected = {(m, PLACEHOLDER_PATHS.get(p, p)) for m, p in served}
    assert expected == tested


@pytest.fixture
async def owners(
    start_server: StartServer, mock_upstream: MockUpstream, monkeypatch: pytest.MonkeyPatch
) -> Running:
    for key, (owner, value) in zip(API_KEYS, KEYS.items(), strict=True):
        assert key.owner == owner
        monkeypatch.setenv(key.key_env, value)
    return await start_server(mock_upstream.url, api_keys=API_KEYS)


@pytest.fixture
async def alice(owners: Running) -> AsyncIterator[httpx.AsyncClient]:
    assert owners.url is not None
    headers = {"authorization": f"Bearer {KEYS['alice']}"}
    async with httpx.AsyncClient(base_url=owners.url, headers=headers, timeout=30) as c:
        yield c


@pytest.fixture
async def bob(owners: Running) -> AsyncIterator[httpx.AsyncClient]:
    assert owners.url is not None
    headers = {"authorization": f"Bearer {KEYS['bob']}"}
    async with httpx.AsyncClient(base_url=owners.url, headers=headers, timeout=30) as c:
        yield c


@pytest.fixture
async def alices_ids(alice: httpx.AsyncClient, mock_upstream: MockUpstream) -> dict[str, str]:
    """A finished batch of alice's with an output and an error file."""
    mock_upstream.config.per_model["bad"] = Behaviour(status=400)
    content = jsonl([chat_line("ok"), chat_line("ko", model="bad")])
    uploaded = await alice.post(
        "/v1/files", files={"file": ("a.jsonl", content)}, data={"purpose": "batch"}
    )
    assert uploaded.status_code == 200, uploaded.text
    file_id = uploaded.json()["id"]
    body = {
        "input_file_id": file_id,
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
    }
    created = await alice.post("/v1/batches", json=body)
    assert created.status_code == 200, created.text
    batch_id = created.json()["id"]
    batch = await wait_status_json(alice, batch_id, "completed")
    return {
        "file": file_id,
        "batch": batch_id,
        "output": batch["output_file_id"],
        "error": batch["error_file_id"],
    }


def _id(route: Route) -> str:
    return f"{route.method} {route.path}"


@pytest.mark.parametrize("route", ID_ROUTES, ids=_id)
async def test_another_owners_ids_are_not_found(
    route: Route, alice: httpx.AsyncClient, bob: httpx.AsyncClient, alices_ids: dict[str, str]
) -> None:
    url, body = route.url(alices_ids), route.body(alices_ids)
    theirs = await bob.request(route.method, url, json=body)
    assert theirs.status_code == 404, theirs.text
    assert theirs.json()["error"]["type"] == "invalid_request_error"
    # ... exactly like an id that does not exist at all
    unknown = {
        k: v[: v.rfind("_") + 1 if "_" in v else 5] + "0" * 32 for k, v in alices_ids.items()
    }
    nowhere = await bob.request(route.method, route.url(unknown), json=route.body(unknown))
    assert nowhere.status_code == 404
    assert nowhere.json()["error"]["code"] == theirs.json()["error"]["code"]
    # The owner gets an answer (the route table is right).
    mine = await alice.request(route.method, url, json=body)
    assert mine.status_code == 200, mine.text


async def test_lists_show_only_the_owners_objects(
    alice: httpx.AsyncClient, bob: httpx.AsyncClient, alices_ids: dict[str, str]
) -> None:
    assert (await bob.get("/v1/files")).json()["data"] == []
    assert (await bob.get("/v1/batches")).json()["data"] == []
    mine = {f["id"] for f in (await alice.get("/v1/files")).json()["data"]}
    assert {alices_ids["file"], alices_ids["output"], alices_ids["error"]} <= mine
    # A cursor of another owner is as unknown as a made-up one.
    cursor = await bob.get(f"/v1/batches?after={alices_ids['batch']}")
    assert cursor.status_code == 400
    cursor = await bob.get(f"/v1/files?after={alices_ids['file']}")
    assert cursor.status_code == 400


ALL_V1 = [*ID_ROUTES, *LIST_ROUTES]
FAKE_IDS = {"file": "file-" + "1" * 32, "output": "file-" + "2" * 32, "error": "file-" + "3" * 32,
            "batch": "batch_" + "4" * 32}  # fmt: skip


@pytest.mark.parametrize("route", ALL_V1, ids=_id)
@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer sk-wrong", "Bearer", "Basic c2stYWxpY2U=", f"bearer {KEYS['alice']}x"],
    ids=["missing", "wrong", "no-key", "basic", "longer"],
)
async def test_v1_routes_need_a_valid_key(
    owners: Running, route: Route, authorization: str | None
) -> None:
    assert owners.url is not None
    headers = {"authorization": authorization} if authorization is not None else {}
    async with httpx.AsyncClient(base_url=owners.url, headers=headers) as c:
        response = await c.request(route.method, route.url(FAKE_IDS), json=route.body(FAKE_IDS))
    assert response.status_code == 401, response.text
    error = response.json()["error"]
    assert error["code"] in ("missing_api_key", "invalid_api_key")
    assert KEYS["alice"] not in response.text
    assert response.headers["www-authenticate"] == "Bearer"


async def test_operational_routes_need_no_key(owners: Running) -> None:
    assert owners.url is not None
    async with httpx.AsyncClient(base_url=owners.url) as c:
        for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
            response = await c.get(path)
            assert response.status_code == 200, (path, response.text)


async def test_the_key_is_case_sensitive_and_the_scheme_is_not(alice: httpx.AsyncClient) -> None:
    ok = await alice.get("/v1/files", headers={"authorization": f"bearer {KEYS['alice']}"})
    assert ok.status_code == 200
    upper = await alice.get(
        "/v1/files", headers={"authorization": f"Bearer {KEYS['alice'].upper()}"}
    )
    assert upper.status_code == 401


def test_load_keys() -> None:
    ring = load_keys(API_KEYS, {k.key_env: v for k, v in zip(API_KEYS, KEYS.values(), strict=True)})
    assert ring.owner_for(f"Bearer {KEYS['bob']}") == "bob"
    assert KEYS["bob"] not in repr(ring)
    with pytest.raises(ConfigError, match="FUSILLADE_TEST_KEY_ALICE"):
        load_keys(API_KEYS, {})
    with pytest.raises(ConfigError, match="same key"):
        load_keys(API_KEYS, {k.key_env: "same" for k in API_KEYS})
    assert KeyRing(()).owner_for(None) == "default"


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("[::1]", True),
     ("localhost", True), ("0.0.0.0", False), ("::", False), ("10.0.0.1", False),
     ("example.com", False)],
)  # fmt: skip
def test_without_keys_only_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
    if loopback:
        check_bind(host, KeyRing(()))
    else:
        with pytest.raises(ConfigError, match="refusing to listen"):
            check_bind(host, KeyRing(()))
    check_bind(host, load_keys(API_KEYS[:1], {API_KEYS[0].key_env: "k"}))
