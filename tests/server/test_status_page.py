"""The status page (``GET /``) in a real browser, and its JSON, scope and headers.

The browser tests run headless Chromium (Debian package ``chromium``) against a live
server with a running batch (requests held by the mock upstream). One lets the page's
script poll ``/status.json`` (``--virtual-time-budget``) and reads the DOM it leaves
(``--dump-dom``): the batch's progress bar, the model's requests in flight, the error
list, and batch metadata holding markup shown as text. The other drives the page through
the DevTools protocol as a remote user would (a proxy's ``X-Forwarded-For`` on every
request): the key prompt, a refused key, a key that scopes the page to its owner and
survives a reload, "Forget key". Without Chromium they skip, unless ``CI`` is set
(``.ci/run`` installs it): then they fail.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs
import httpx
import pytest
import trio
from helpers import poll_until
from serverkit import UPSTREAM_KEY, UPSTREAM_KEY_ENV, chat_line, jsonl, settings_for
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Ping, Request, TextMessage

from fusillade.config import ApiKey
from fusillade.mock_upstream import Behaviour, MockUpstream
from fusillade.server.serve import Running, serve

KEYS = {"alice": "sk-status-alice-0001", "bob": "sk-status-bob-0002"}
HOSTILE = "<script>document.title='pwned'</script><img src=x onerror=\"document.title='x'\">"
HELD, FAST, BAD = "held-model", "fast-model", "bad-model"


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        if found := shutil.which(name):
            return found
    return None


def _browser() -> str:
    found = chromium()
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("CI is set but chromium is not installed (.ci/run installs it)")
        pytest.skip("chromium is not installed (Debian package chromium)")
    return found


async def dump_dom(url: str, profile: Path, *, budget_ms: int = 5000) -> str:
    """The DOM Chromium holds after loading ``url`` and running its scripts for
    ``budget_ms`` of virtual time."""
    argv = [
        _browser(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-dev-shm-usage",  # containers give /dev/shm 64 MB
        f"--user-data-dir={profile}",
        f"--virtual-time-budget={budget_ms}",
        "--dump-dom",
        url,
    ]
    with trio.fail_after(120):
        done = await trio.run_process(argv, capture_stdout=True, capture_stderr=True)
    return bytes(done.stdout).decode()


class Dom(HTMLParser):
    """The parts of the status page a test reads: each table's rows (cell texts, the
    row's attributes, its progress bar's attributes), the title, the body's attributes
    and the scripts."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[dict[str, Any]]] = {}
        self.title = ""
        self.body: dict[str, str | None] = {}
        self.scripts: list[dict[str, str | None]] = []
        self._table: str | None = None
        self._row: dict[str, Any] | None = None
        self._cell: list[str] | None = None
        self._in_title = False

    def handle_starttag(self, tag: str, attrs_: list[tuple[str, str | None]]) -> None:
        a = dict(attrs_)
        if tag == "table":
            self._table = a.get("id")
            self.tables[str(self._table)] = []
        elif tag == "tr" and self._table is not None:
            self._row = {"attrs": a, "cells": [], "progress": None}
        elif tag == "td" and self._row is not None:
            self._cell = []
        elif tag == "progress" and self._row is not None:
            self._row["progress"] = a
        elif tag == "title":
            self._in_title = True
        elif tag == "body":
            self.body = a
        elif tag == "script":
            self.scripts.append(a)

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._row is not None and self._cell is not None:
            self._row["cells"].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            if self._row["cells"]:  # not the header row
                assert self._table is not None
                self.tables[self._table].append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None
        elif tag == "title":
            self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._in_title:
            self.title += data


def parse(html: str) -> Dom:
    dom = Dom()
    dom.feed(html)
    dom.close()
    return dom


@pytest.fixture
async def held_upstream(mock_upstream: MockUpstream) -> AsyncIterator[MockUpstream]:
    """The mock upstream holding every request of ``HELD`` and refusing ``BAD`` (400)."""
    mock_upstream.config.per_model[HELD] = Behaviour(hold=True)
    mock_upstream.config.per_model[BAD] = Behaviour(status=400)
    yield mock_upstream
    mock_upstream.release_held()


@pytest.fixture
async def keyed_server(
    nursery: trio.Nursery,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    held_upstream: MockUpstream,
) -> Running:
    """A server with keys for alice and bob, its daemon sending to ``held_upstream``
    without slow start (every held request is in flight at once)."""
    monkeypatch.setenv(UPSTREAM_KEY_ENV, UPSTREAM_KEY)
    keys = []
    for owner, key in KEYS.items():
        monkeypatch.setenv(f"FUSILLADE_TEST_STATUS_{owner.upper()}", key)
        keys.append(ApiKey(key_env=f"FUSILLADE_TEST_STATUS_{owner.upper()}", owner=owner))
    settings = settings_for(database_url, held_upstream.url, api_keys=keys)
    upstream = attrs.evolve(settings.upstreams["mock"], slow_start=False)
    settings = attrs.evolve(settings, upstreams={"mock": upstream})
    config = attrs.evolve(settings.daemon_config(), poll_interval=0.1, maintenance_interval=0.2)
    running: Running = await nursery.start(
        lambda task_status: serve(
            settings, daemon_config=config, migrate=False, task_status=task_status
        )
    )
    return running


def api(running: Running, owner: str) -> httpx.AsyncClient:
    assert running.url is not None
    headers = {"Authorization": f"Bearer {KEYS[owner]}"}
    return httpx.AsyncClient(base_url=running.url, headers=headers, timeout=30)


async def start_batch(
    running: Running, owner: str, lines: list[dict[str, Any]], metadata: dict[str, str]
) -> str:
    async with api(running, owner) as c:
        up = await c.post(
            "/v1/files", files={"file": ("in.jsonl", jsonl(lines))}, data={"purpose": "batch"}
        )
        assert up.status_code == 200, up.text
        batch = await c.post(
            "/v1/batches",
            json={
                "input_file_id": up.json()["id"],
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
                "metadata": metadata,
            },
        )
        assert batch.status_code == 200, batch.text
        batch_id: str = batch.json()["id"]
        return batch_id


async def running_batches(running: Running, upstream: MockUpstream) -> tuple[str, str]:
    """Alice's batch (3 requests held, 2 completed, 1 failed; hostile metadata) and Bob's
    (1 completed), once the daemon got there."""
    lines = [chat_line(f"h{i}", model=HELD) for i in range(3)]
    lines += [chat_line(f"f{i}", model=FAST) for i in range(2)]
    lines += [chat_line("bad", model=BAD)]
    alice = await start_batch(running, "alice", lines, {"note": HOSTILE})
    bob = await start_batch(running, "bob", [chat_line("b0", model=FAST)], {"who": "bob"})

    async def counts(owner: str, batch_id: str) -> dict[str, int]:
        async with api(running, owner) as c:
            found: dict[str, int] = (await c.get(f"/v1/batches/{batch_id}")).json()[
                "request_counts"
            ]
            return found

    await poll_until(
        lambda: counts("alice", alice), lambda c: (c["completed"], c["failed"]) == (2, 1)
    )
    await poll_until(lambda: counts("bob", bob), lambda c: c["completed"] == 1)
    with trio.fail_after(30):
        await upstream.wait_until(lambda stats: stats.in_flight[HELD] == 3)
    return alice, bob


async def test_the_page_shows_running_batches_in_a_browser(
    keyed_server: Running, held_upstream: MockUpstream, tmp_path: Path
) -> None:
    _browser()  # skip (or fail in CI) before starting batches
    alice, bob = await running_batches(keyed_server, held_upstream)
    assert keyed_server.url is not None
    # Loopback without a key: the operator's view, every owner's batches.
    dom = parse(await dump_dom(keyed_server.url + "/", tmp_path / "profile"))

    assert dom.body.get("data-live"), "the script never drew a poll's answer"
    assert dom.title == "fusillade status"  # the metadata's script never ran
    assert [s.get("src") for s in dom.scripts] == ["/status.js"]
    batches = {row["attrs"]["data-id"]: row for row in dom.tables["batches"]}
    assert set(batches) == {alice, bob}
    row = batches[alice]
    assert row["cells"][:3] == [alice, "in_progress", "alice"]
    assert row["progress"] == {"value": "3", "max": "6"}
    assert "3/6 done: 2 completed, 1 failed, 0 canceled, 3 in flight" in row["cells"][5]
    assert row["cells"][4] == f"note={HOSTILE}"  # shown as text
    assert batches[bob]["progress"] == {"value": "1", "max": "1"}
    assert batches[bob]["cells"][1] == "completed"

    models = {row["attrs"]["data-model"]: row["cells"] for row in dom.tables["models"]}
    assert models[HELD][:2] == [HELD, "3"]
    assert models[FAST][1:3] == ["0", "3"]  # nothing in flight, 3 completed this minute
    [error] = dom.tables["errors"]
    assert error["cells"][1:4] == [BAD, alice, "400"]


async def test_the_json_is_scoped_to_the_key(
    keyed_server: Running, held_upstream: MockUpstream
) -> None:
    alice, bob = await running_batches(keyed_server, held_upstream)
    assert keyed_server.url is not None
    async with api(keyed_server, "alice") as c:
        mine = (await c.get("/status.json")).json()
    assert mine["owner"] == "alice"
    assert [b["id"] for b in mine["batches"]] == [alice]
    held = {m["model"]: m for m in mine["models"]}[HELD]
    assert (held["in_flight"], held["completed"]) == (3, 0)
    assert [e["batch_id"] for e in mine["errors"]] == [alice]
    async with api(keyed_server, "bob") as c:
        theirs = (await c.get("/status.json")).json()
    assert [b["id"] for b in theirs["batches"]] == [bob]
    assert theirs["errors"] == []
    assert {m["model"] for m in theirs["models"]} == {FAST}

    async with httpx.AsyncClient(base_url=keyed_server.url, timeout=30) as c:
        local = (await c.get("/status.json")).json()
        assert local["owner"] is None
        assert {b["id"] for b in local["batches"]} == {alice, bob}
        wrong = await c.get("/status.json", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        # Not the operator: behind a proxy on this machine, or a page on another name
        # (DNS rebinding) or of another origin: a key or nothing.
        for headers in (
            {"X-Forwarded-For": "203.0.113.9"},
            {"Forwarded": "for=203.0.113.9"},
            {"Host": "attacker.example"},
            {"Origin": "http://attacker.example"},
        ):
            refused = await c.get("/status.json", headers=headers)
            assert refused.status_code == 401, headers
            prompt = await c.get("/", headers=headers)
            assert prompt.status_code == 200
            assert alice not in prompt.text and bob not in prompt.text
            assert "This page needs an API key." in prompt.text


async def test_the_page_is_escaped_and_self_contained(
    keyed_server: Running, held_upstream: MockUpstream
) -> None:
    alice, _ = await running_batches(keyed_server, held_upstream)
    assert keyed_server.url is not None
    async with httpx.AsyncClient(base_url=keyed_server.url, timeout=30) as c:
        page = await c.get("/")
        script = await c.get("/status.js")
        style = await c.get("/status.css")
        schema = (await c.get("/openapi.json")).json()
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert alice in page.text
    assert HOSTILE not in page.text
    assert "note=&lt;script&gt;document.title=&#x27;pwned&#x27;&lt;/script&gt;" in page.text
    # Only the page's own script runs: no inline script, no handler attributes of ours.
    assert page.text.count("<script") == 1
    assert '<script src="/status.js" defer></script>' in page.text
    for answer in (page, script, style):
        csp = answer.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "default-src 'none'" in csp
        assert "unsafe" not in csp
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert "http://" not in answer.text and "https://" not in answer.text
    assert script.headers["content-type"].startswith("text/javascript")
    assert style.headers["content-type"].startswith("text/css")
    assert not {"/", "/status.json", "/status.js", "/status.css"} & set(schema["paths"])


async def test_a_server_without_keys_shows_everything(
    start_server: Any, mock_upstream: MockUpstream
) -> None:
    running: Running = await start_server(mock_upstream.url)
    assert running.url is not None
    async with httpx.AsyncClient(base_url=running.url, timeout=30) as c:
        up = await c.post(
            "/v1/files",
            files={"file": ("in.jsonl", jsonl([chat_line("a")]))},
            data={"purpose": "batch"},
        )
        batch = await c.post(
            "/v1/batches",
            json={
                "input_file_id": up.json()["id"],
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
            },
        )
        data = (await c.get("/status.json", headers={"Authorization": "Bearer any"})).json()
    assert data["owner"] is None
    assert [b["id"] for b in data["batches"]] == [batch.json()["id"]]


class DevTools:
    """A minimal client of Chromium's DevTools protocol: one page's websocket (wsproto
    over a trio stream), commands answered in order, events skipped."""

    def __init__(self, stream: trio.SocketStream, ws: WSConnection) -> None:
        self.stream, self.ws, self.last_id = stream, ws, 0
        self.pending: list[object] = []
        self.text = ""

    @classmethod
    async def connect(cls, url: str) -> DevTools:
        parts = urlsplit(url)
        assert parts.hostname is not None and parts.port is not None
        stream = await trio.open_tcp_stream(parts.hostname, parts.port)
        ws = WSConnection(ConnectionType.CLIENT)
        await stream.send_all(ws.send(Request(host=parts.netloc, target=parts.path)))
        client = cls(stream, ws)
        while not isinstance(await client._next(), AcceptConnection):
            pass
        return client

    async def _next(self) -> object:
        """The next websocket event (pings answered; a close fails the test)."""
        while not self.pending:
            data = await self.stream.receive_some(65536)
            assert data, "the DevTools websocket closed"
            self.ws.receive_data(data)
            for event in self.ws.events():
                assert not isinstance(event, CloseConnection), "the DevTools websocket closed"
                if isinstance(event, Ping):
                    await self.stream.send_all(self.ws.send(event.response()))
                else:
                    self.pending.append(event)
        return self.pending.pop(0)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.last_id += 1
        message = json.dumps({"id": self.last_id, "method": method, "params": params})
        await self.stream.send_all(self.ws.send(TextMessage(message)))
        while True:
            event = await self._next()
            if not isinstance(event, TextMessage):
                continue
            self.text += event.data
            if not event.message_finished:
                continue
            answer, self.text = json.loads(self.text), ""
            if answer.get("id") == self.last_id:
                assert "error" not in answer, answer
                result: dict[str, Any] = answer["result"]
                return result

    async def evaluate(self, expression: str) -> Any:
        found = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in found, found
        return found["result"].get("value")


@pytest.fixture
async def devtools(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[DevTools]:
    """Headless Chromium with the DevTools protocol on a free port, connected to its
    page (stopped when the test ends: the nursery's cancellation kills it)."""
    profile = tmp_path / "profile"
    argv = [
        _browser(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-dev-shm-usage",  # containers give /dev/shm 64 MB
        f"--user-data-dir={profile}",
        "--remote-debugging-port=0",
        "about:blank",
    ]
    nursery.start_soon(
        functools.partial(
            trio.run_process, argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
    )
    port_file = profile / "DevToolsActivePort"
    await poll_until(lambda: port_file.exists() and len(port_file.read_text().split()) == 2)
    port = port_file.read_text().split()[0]
    async with httpx.AsyncClient(timeout=30) as c:
        targets = (await c.get(f"http://127.0.0.1:{port}/json/list")).json()
    [page] = [t for t in targets if t["type"] == "page"]
    client = await DevTools.connect(page["webSocketDebuggerUrl"])
    async with client.stream:
        yield client


# What a test reads of the page, as the script left it. ``ready``: the script has run
# (deferred scripts run before the document completes); ``old``: a mark the test sets on
# a page it reloads.
PAGE_STATE = """document.getElementById("scope") && JSON.stringify({
  ready: document.readyState === "complete",
  old: document.body.dataset.old || null,
  live: document.body.dataset.live || null,
  scope: document.getElementById("scope").textContent,
  message: document.getElementById("message").textContent,
  hidden: document.getElementById("content").hidden,
  batches: [...document.querySelectorAll("#batches tbody tr[data-id]")].map(r => r.dataset.id),
  stored: sessionStorage.getItem("fusillade-status-key"),
})"""


async def page_state(browser: DevTools, until: Any) -> dict[str, Any]:
    async def read() -> dict[str, Any]:
        found = await browser.evaluate(PAGE_STATE)
        state: dict[str, Any] = json.loads(found) if found else {"loading": True}
        return state

    return await poll_until(read, until)


async def enter_key(browser: DevTools, key: str) -> None:
    await browser.evaluate(
        f"document.getElementById('key').value = {json.dumps(key)};"
        "document.getElementById('key-form').requestSubmit();"
    )


async def test_a_remote_user_enters_a_key_in_the_page(
    keyed_server: Running, held_upstream: MockUpstream, devtools: DevTools
) -> None:
    alice, bob = await running_batches(keyed_server, held_upstream)
    assert keyed_server.url is not None
    # Every request of the page as if through a proxy on the server's machine.
    await devtools.call("Network.enable")
    await devtools.call("Network.setExtraHTTPHeaders", headers={"X-Forwarded-For": "203.0.113.9"})
    await devtools.call("Page.navigate", url=keyed_server.url + "/")
    prompt = "This page needs an API key."
    state = await page_state(devtools, lambda s: s.get("ready") and s["message"] == prompt)
    assert (state["hidden"], state["batches"], state["live"]) == (True, [], None)

    await enter_key(devtools, "sk-wrong")
    state = await page_state(devtools, lambda s: s.get("message") == "That key was refused.")
    assert (state["hidden"], state["stored"]) == (True, None)

    await enter_key(devtools, KEYS["bob"])
    state = await page_state(devtools, lambda s: s.get("live") is not None)
    assert (state["scope"], state["batches"], state["hidden"]) == ("owner bob", [bob], False)
    assert state["stored"] == KEYS["bob"]
    assert await devtools.evaluate("document.getElementById('key').value") == ""

    # The key stays for the tab: a reload shows bob's batches again, not a prompt.
    await devtools.evaluate("document.body.dataset.old = 'yes'")
    await devtools.call("Page.reload")
    state = await page_state(
        devtools, lambda s: s.get("ready") and not s["old"] and s["live"] is not None
    )
    assert (state["scope"], state["batches"]) == ("owner bob", [bob])

    await enter_key(devtools, KEYS["alice"])
    await page_state(devtools, lambda s: s.get("batches") == [alice])

    await devtools.evaluate("document.getElementById('forget').click()")
    state = await page_state(devtools, lambda s: s.get("message") == prompt)
    assert (state["hidden"], state["stored"], state["live"]) == (True, None, None)
    assert state["batches"] == []  # alice's rows are gone, not only hidden
