"""The mock upstream (``fusillade.mock_upstream``) over real sockets, with httpx as the client."""

from __future__ import annotations

import json
import select
import signal
import subprocess
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack
from typing import Any

import attrs
import httpx
import pytest
import trio
from upstream import mock_upstream_fixture  # noqa: F401 (registers the ``mock_upstream`` fixture)

from fusillade.mock_upstream import (
    Behaviour,
    MockConfig,
    MockStats,
    MockUpstream,
    serve_mock_upstream,
)

CHAT = "/v1/chat/completions"
WAIT = 10.0  # seconds: the bound of every wait on the server's counters


def chat_body(text: str = "hello mock world", model: str = "m") -> dict[str, Any]:
    return {
        "model": model,
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": text},
        ],
    }


@pytest.fixture
async def client(mock_upstream: MockUpstream) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=mock_upstream.url, timeout=WAIT) as c:
        yield c


async def wait_stats(server: MockUpstream, predicate: Callable[[MockStats], bool]) -> None:
    with trio.fail_after(WAIT):
        await server.wait_until(predicate)


# --- answers ------------------------------------------------------------------------------


async def test_chat_completion_is_deterministic_and_echoes(client: httpx.AsyncClient) -> None:
    first = await client.post(CHAT, json=chat_body())
    again = await client.post(CHAT, json=chat_body())
    other = await client.post(CHAT, json=chat_body("something else"))

    assert first.status_code == 200
    assert first.json() == again.json()
    body = first.json()
    assert body["id"].startswith("chatcmpl-")
    assert body["id"] != other.json()["id"]
    assert body["object"] == "chat.completion"
    assert body["model"] == "m"
    choice = body["choices"][0]
    assert choice["message"] == {
        "role": "assistant",
        "content": "echo: hello mock world",
        "refusal": None,
    }
    assert choice["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}


async def test_max_tokens_cuts_the_reply(client: httpx.AsyncClient) -> None:
    response = await client.post(CHAT, json={**chat_body("a b c d e"), "max_tokens": 2})
    choice = response.json()["choices"][0]
    assert choice["message"]["content"] == "echo: a"
    assert choice["finish_reason"] == "length"


async def test_other_endpoints(client: httpx.AsyncClient) -> None:
    completion = (await client.post("/v1/completions", json={"model": "c", "prompt": "x y"})).json()
    assert completion["object"] == "text_completion"
    assert completion["choices"][0]["text"] == "echo: x y"

    embeddings = await client.post("/v1/embeddings", json={"model": "e", "input": ["a b", "c"]})
    data = embeddings.json()["data"]
    assert [d["index"] for d in data] == [0, 1]
    assert len(data[0]["embedding"]) == 8
    assert sum(v * v for v in data[0]["embedding"]) == pytest.approx(1.0, abs=1e-4)
    assert data[0]["embedding"] != data[1]["embedding"]
    assert embeddings.json()["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    wide = await client.post("/v1/embeddings", json={"model": "e", "input": "a", "dimensions": 64})
    assert len(wide.json()["data"][0]["embedding"]) == 64

    request = {"model": "r", "input": "one two three", "instructions": "be nice"}
    response = (await client.post("/v1/responses", json=request)).json()
    assert response["object"] == "response"
    assert response["status"] == "completed"
    assert response["output"][0]["content"][0]["text"] == "echo: one two three"
    assert response["usage"] == {"input_tokens": 5, "output_tokens": 4, "total_tokens": 9}

    moderation = (await client.post("/v1/moderations", json={"input": ["a", "b"]})).json()
    assert [r["flagged"] for r in moderation["results"]] == [False, False]


@pytest.mark.parametrize(
    ("method", "path", "content", "status", "param"),
    [
        ("POST", CHAT, b"{not json", 400, None),
        ("POST", CHAT, b"[1, 2]", 400, None),
        ("POST", CHAT, json.dumps({"messages": []}).encode(), 400, "model"),
        ("POST", CHAT, json.dumps({"model": "m"}).encode(), 400, "messages"),
        ("POST", "/v1/unknown", b"{}", 404, None),
        ("GET", CHAT, None, 405, None),
    ],
)
async def test_bad_requests_get_an_error_envelope(
    client: httpx.AsyncClient,
    method: str,
    path: str,
    content: bytes | None,
    status: int,
    param: str | None,
) -> None:
    response = await client.request(method, path, content=content)
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    assert error["param"] == param


async def test_health(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_models_lists_the_configured_models_uncounted(
    mock_upstream: MockUpstream, client: httpx.AsyncClient
) -> None:
    answer = await client.get("/v1/models")
    assert answer.status_code == 200
    assert answer.json() == {
        "object": "list",
        "data": [
            {"id": "mock-model", "object": "model", "created": 1_700_000_000, "owned_by": "mock"}
        ],
    }
    mock_upstream.config.per_model = {"b": Behaviour(), "a": Behaviour(status=500)}
    ids = [m["id"] for m in (await client.get("/v1/models")).json()["data"]]
    assert ids == ["a", "b"]
    assert mock_upstream.stats.total == 0


async def test_malformed_http_gets_400(mock_upstream: MockUpstream) -> None:
    host, port = mock_upstream.url.removeprefix("http://").rsplit(":", 1)
    with trio.fail_after(WAIT):
        stream = await trio.open_tcp_stream(host, int(port))
        async with stream:
            await stream.send_all(b"NOT HTTP AT ALL\r\n\r\n")
            received = b""
            while chunk := await stream.receive_some():
                received += chunk
    assert received.startswith(b"HTTP/1.1 400 ")


# --- faults -------------------------------------------------------------------------------


async def test_status_with_retry_after(
    mock_upstream: MockUpstream, client: httpx.AsyncClient
) -> None:
    mock_upstream.config.default = Behaviour(status=503, retry_after=1.5, should_retry=True)
    response = await client.post(CHAT, json=chat_body())
    assert response.status_code == 503
    assert response.headers["retry-after"] == "2"
    assert response.headers["retry-after-ms"] == "1500"
    assert response.headers["x-should-retry"] == "true"
    assert response.json()["error"]["type"] == "server_error"
    assert mock_upstream.stats.faults["status"] == 1


async def test_header_overrides(mock_upstream: MockUpstream, client: httpx.AsyncClient) -> None:
    headers = {"x-mock-status": "429", "x-mock-retry-after": "3", "x-mock-retry-after-format": "ms"}
    limited = await client.post(CHAT, json=chat_body(), headers=headers)
    assert limited.status_code == 429
    assert limited.headers["retry-after-ms"] == "3000"
    assert "retry-after" not in limited.headers
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"

    start = trio.current_time()
    delayed = await client.post(CHAT, json=chat_body(), headers={"x-mock-delay": "0.2"})
    assert delayed.status_code == 200
    assert trio.current_time() - start >= 0.2

    bad = await client.post(CHAT, json=chat_body(), headers={"x-mock-statuss": "500"})
    assert bad.status_code == 400
    assert "x-mock-statuss" in bad.json()["error"]["message"]
    not_a_number = await client.post(CHAT, json=chat_body(), headers={"x-mock-delay": "soon"})
    assert not_a_number.status_code == 400


async def test_rate_limit_first_n(mock_upstream: MockUpstream, client: httpx.AsyncClient) -> None:
    mock_upstream.config.default = Behaviour(rate_limit_first=2, retry_after=1)
    statuses = [(await client.post(CHAT, json=chat_body())).status_code for _ in range(4)]
    assert statuses == [429, 429, 200, 200]
    mock_upstream.reset()
    assert (await client.post(CHAT, json=chat_body())).status_code == 429


async def test_rate_limit_attempts_per_request_id(
    mock_upstream: MockUpstream, client: httpx.AsyncClient
) -> None:
    mock_upstream.config.default = Behaviour(rate_limit_attempts=2, retry_after_format="seconds")
    seen = []
    for request_id in ["a", "b", "a", "b", "a", "b"]:
        headers = {"X-Fusillade-Request-Id": request_id}
        seen.append((await client.post(CHAT, json=chat_body(), headers=headers)).status_code)
    assert seen == [429, 429, 429, 429, 200, 200]
    assert mock_upstream.stats.by_request_id == {"a": 3, "b": 3}

    mock_upstream.config.default = Behaviour(rate_limit_attempts=1)
    by_body = [(await client.post(CHAT, json=chat_body(text))).status_code for text in "xyxy"]
    assert by_body == [429, 429, 200, 200]


async def test_retry_after_as_http_date(
    mock_upstream: MockUpstream, client: httpx.AsyncClient
) -> None:
    mock_upstream.config.default = Behaviour(
        rate_limit_rate=1.0, retry_after=5, retry_after_format="date"
    )
    response = await client.post(CHAT, json=chat_body())
    assert response.status_code == 429
    assert response.headers["retry-after"].endswith(" GMT")


async def test_error_and_invalid_json(
    mock_upstream: MockUpstream, client: httpx.AsyncClient
) -> None:
    mock_upstream.config.default = Behaviour(error_rate=1.0)
    failed = await client.post(CHAT, json=chat_body())
    assert failed.status_code == 500
    assert failed.json()["error"]["type"] == "server_error"

    mock_upstream.config.default = Behaviour(invalid_json_rate=1.0)
    garbled = await client.post(CHAT, json=chat_body())
    assert garbled.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(garbled.content)
    assert mock_upstream.stats.faults == {"error": 1, "invalid_json": 1}


async def test_reset_drops_the_connection(
    mock_upstream: MockUpstream, client: httpx.AsyncClient
) -> None:
    mock_upstream.config.default = Behaviour(reset_rate=1.0)
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        await client.post(CHAT, json=chat_body())
    await wait_stats(mock_upstream, lambda s: s.connections_open == 0)
    assert mock_upstream.stats.faults["reset"] == 1
    assert mock_upstream.stats.in_flight == {}


async def test_timeout_hangs_until_the_client_gives_up(mock_upstream: MockUpstream) -> None:
    mock_upstream.config.default = Behaviour(timeout_rate=1.0)
    async with httpx.AsyncClient(base_url=mock_upstream.url, timeout=0.2) as impatient:
        with pytest.raises(httpx.ReadTimeout):
            await impatient.post(CHAT, json=chat_body())
    await wait_stats(mock_upstream, lambda s: s.in_flight_total == 0)
    assert mock_upstream.stats.faults["timeout"] == 1
    assert mock_upstream.stats.by_status == {}


async def test_slow_body_arrives_in_pieces(mock_upstream: MockUpstream) -> None:
    mock_upstream.config.default = Behaviour(slow_body=0.3)
    async with httpx.AsyncClient(base_url=mock_upstream.url, timeout=WAIT) as c:
        start = trio.current_time()
        async with c.stream("POST", CHAT, json=chat_body()) as response:
            chunks = [chunk async for chunk in response.aiter_raw()]
        elapsed = trio.current_time() - start
    assert len(chunks) >= 2
    assert elapsed >= 0.25
    assert json.loads(b"".join(chunks))["object"] == "chat.completion"


async def test_per_model_behaviour(mock_upstream: MockUpstream, client: httpx.AsyncClient) -> None:
    mock_upstream.config.per_model["m-fail"] = Behaviour(status=500)
    assert (await client.post(CHAT, json=chat_body(model="m-fail"))).status_code == 500
    assert (await client.post(CHAT, json=chat_body(model="m-ok"))).status_code == 200
    assert mock_upstream.stats.by_model == {"m-fail": 1, "m-ok": 1}


async def _statuses(client: httpx.AsyncClient, count: int) -> list[int]:
    return [(await client.post(CHAT, json=chat_body())).status_code for _ in range(count)]


async def test_random_faults_replay_with_the_seed(nursery: trio.Nursery) -> None:
    config = MockConfig(default=Behaviour(error_rate=0.5), seed=7)
    first: MockUpstream = await nursery.start(serve_mock_upstream, config)
    second: MockUpstream = await nursery.start(serve_mock_upstream, attrs.evolve(config))
    async with (
        httpx.AsyncClient(base_url=first.url) as one,
        httpx.AsyncClient(base_url=second.url) as two,
    ):
        run = await _statuses(one, 20)
        assert {200, 500} == set(run)
        assert await _statuses(two, 20) == run
        first.reset()
        assert await _statuses(one, 20) == run
        first.config.seed = 8
        assert await _statuses(one, 20) != run


# --- counters and control routes ------------------------------------------------------------


async def test_counters_and_last_headers(
    mock_upstream: MockUpstream, client: httpx.AsyncClient
) -> None:
    headers = {"X-Fusillade-Request-Id": "req-1", "Idempotency-Key": "req-1"}
    await client.post(CHAT, json=chat_body(), headers=headers)
    await client.post(CHAT, json=chat_body(model="other"), headers=headers)
    await client.post("/v1/embeddings", json={"model": "e", "input": "x"})
    await client.get("/health")  # control routes are not counted

    stats = mock_upstream.stats
    assert stats.total == 3
    assert stats.by_model == {"m": 1, "other": 1, "e": 1}
    assert stats.by_path == {CHAT: 2, "/v1/embeddings": 1}
    assert stats.by_request_id == {"req-1": 2}
    assert stats.by_status == {200: 3}
    assert stats.peak_in_flight == {"m": 1, "other": 1, "e": 1}
    assert stats.in_flight == {}
    assert stats.connections_opened == 1  # keep-alive
    assert "idempotency-key" not in stats.last_headers
    assert stats.last_body == {"model": "e", "input": "x"}
    await client.post(CHAT, json=chat_body(), headers=headers)
    assert stats.last_headers["idempotency-key"] == "req-1"


async def test_stats_reset_and_config_routes(
    mock_upstream: MockUpstream, client: httpx.AsyncClient
) -> None:
    await client.post(CHAT, json=chat_body(), headers={"X-Fusillade-Request-Id": "r"})
    stats = (await client.get("/_stats")).json()
    assert stats["total"] == 1
    assert stats["by_model"] == {"m": 1}
    assert stats["by_request_id"] == {"r": 1}
    assert stats["by_status"] == {"200": 1}
    assert stats["peak_in_flight"] == {"m": 1}
    assert stats["last_headers"]["x-fusillade-request-id"] == "r"

    reset = (await client.post("/_reset")).json()
    assert reset["total"] == 0
    assert reset["by_model"] == {}
    assert mock_upstream.stats.total == 0

    new = {"default": {"status": 503}, "per_model": {"fast": {}}, "seed": 3}
    configured = await client.post("/_config", json=new)
    assert configured.status_code == 200
    assert configured.json()["default"]["status"] == 503
    assert mock_upstream.config.default == Behaviour(status=503)
    assert mock_upstream.config.per_model == {"fast": Behaviour()}
    assert mock_upstream.config.seed == 3
    assert (await client.get("/_config")).json() == configured.json()
    assert (await client.post(CHAT, json=chat_body())).status_code == 503
    assert (await client.post(CHAT, json=chat_body(model="fast"))).status_code == 200

    for bad in ({"default": {"error_rate": 2}}, {"default": {"nope": 1}}, {"sede": 1}, [1]):
        rejected = await client.post("/_config", json=bad)
        assert rejected.status_code == 400
        assert rejected.json()["error"]["message"]
    assert mock_upstream.config.default == Behaviour(status=503)


async def test_hold_and_release(mock_upstream: MockUpstream, client: httpx.AsyncClient) -> None:
    mock_upstream.config.default = Behaviour(hold=True)
    statuses: list[int] = []

    async def send() -> None:
        statuses.append((await client.post(CHAT, json=chat_body())).status_code)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        nursery.start_soon(send)
        await wait_stats(mock_upstream, lambda s: s.in_flight_total == 2)
        assert statuses == []
        await client.post("/_release")
    assert statuses == [200, 200]


# --- concurrency --------------------------------------------------------------------------


async def _wave(
    clients: Sequence[httpx.AsyncClient], per_client: int, models: Sequence[str]
) -> list[int]:
    statuses: list[int] = []

    async def send(c: httpx.AsyncClient, n: int) -> None:
        body = chat_body(f"request {n}", model=models[n % len(models)])
        statuses.append((await c.post(CHAT, json=body)).status_code)

    async with trio.open_nursery() as nursery:
        for i, c in enumerate(clients):
            for j in range(per_client):
                nursery.start_soon(send, c, i * per_client + j)
    return statuses


@pytest.mark.slow
async def test_300_concurrent_keep_alive_requests(mock_upstream: MockUpstream) -> None:
    """Ten clients of 30 connections (one httpx client does not scale to 300)."""
    models = ["a", "b", "c"]
    # keepalive_expiry: on a loaded machine the waves can be more than httpx's default 5 s apart.
    limits = httpx.Limits(max_connections=30, max_keepalive_connections=30, keepalive_expiry=300)
    async with AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(
                httpx.AsyncClient(base_url=mock_upstream.url, limits=limits, timeout=30)
            )
            for _ in range(10)
        ]
        # All 300 in flight at once (held), so the peaks are exact.
        mock_upstream.config.default = Behaviour(latency=0.2, hold=True)
        async with trio.open_nursery() as nursery:
            statuses: list[int] = []

            async def held_wave() -> None:
                statuses.extend(await _wave(clients, 30, models))

            nursery.start_soon(held_wave)
            await wait_stats(mock_upstream, lambda s: s.in_flight_total == 300)
            stats = mock_upstream.stats
            assert stats.in_flight == {"a": 100, "b": 100, "c": 100}
            assert stats.peak_in_flight == {"a": 100, "b": 100, "c": 100}
            assert stats.peak_in_flight_total == 300
            mock_upstream.release_held()
        assert statuses == [200] * 300
        assert mock_upstream.stats.in_flight == {}
        assert mock_upstream.stats.connections_opened == 300

        # Again on the same connections, with latency alone.
        mock_upstream.reset()
        mock_upstream.config.default = Behaviour(latency=0.2)
        assert await _wave(clients, 30, models) == [200] * 300
        stats = mock_upstream.stats
        assert stats.by_model == {"a": 100, "b": 100, "c": 100}
        assert stats.connections_opened == 0
        assert 1 < stats.peak_in_flight_total <= 300
        assert all(1 <= stats.peak_in_flight[m] <= 100 for m in models)
        assert stats.in_flight == {}


# --- command line -------------------------------------------------------------------------


def test_cli_prints_the_url_and_serves(
    spawn_fusillade: Callable[..., subprocess.Popen[str]],
) -> None:
    process = spawn_fusillade(["mock-upstream", "--port", "0", "--status", "503"])
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], 30)
        assert ready, "mock-upstream printed nothing within 30 s"
        line = process.stdout.readline().strip()
        assert line.startswith("mock-upstream listening on http://127.0.0.1:")
        url = line.rsplit(" ", 1)[1]
        with httpx.Client(base_url=url, timeout=WAIT) as c:
            assert c.get("/health").status_code == 200
            assert c.post(CHAT, json=chat_body()).status_code == 503
            assert c.get("/_stats").json()["faults"] == {"status": 1}
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()


def test_cli_rejects_bad_flags(
    run_fusillade: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    result = run_fusillade(["mock-upstream", "--error-rate", "2"])
    assert result.returncode == 1
    assert "error_rate must be between 0 and 1" in result.stderr
    assert "Traceback" not in result.stderr
