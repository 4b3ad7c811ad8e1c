"""Helpers of the server tests (fixtures are in this directory's conftest.py)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import h11
import httpx
import openai
import trio
from helpers import is_setting, poll_until

from fusillade.config import ApiKey, ServerSettings, Settings, UpstreamSettings
from fusillade.server.serve import Running

UPSTREAM_KEY_ENV = "FUSILLADE_TEST_UPSTREAM_KEY"
UPSTREAM_KEY = "sk-upstream-SECRET-4f1d2c3b9a8e7d6c"
"""The upstream api key the test servers are configured with (through UPSTREAM_KEY_ENV)."""

StartServer = Callable[..., Awaitable[Running]]
"""The ``start_server`` fixture: ``await start_server(upstream_url, **server_settings)``."""


def settings_for(
    database_url: str,
    upstream_url: str | None,
    *,
    api_keys: Iterable[ApiKey] = (),
    **server: Any,
) -> Settings:
    upstreams = {}
    if upstream_url is not None:
        upstreams["mock"] = UpstreamSettings(upstream_url, api_key_env=UPSTREAM_KEY_ENV)
    return Settings(
        database_url=database_url,
        server=ServerSettings(host="127.0.0.1", port=0, api_keys=tuple(api_keys), **server),
        upstreams=upstreams,
        default_upstream="mock" if upstream_url is not None else None,
    )


def base_url(running: Running) -> str:
    assert running.url is not None
    return running.url + "/v1"


@asynccontextmanager
async def openai_client(running: Running, key: str = "any") -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=base_url(running), api_key=key, max_retries=0) as c:
        yield c


def jsonl(lines: Iterable[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def chat_line(custom_id: str, model: str = "m", content: str = "hello") -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": content}]},
    }


async def wait_status(
    client: openai.AsyncOpenAI, batch_id: str, statuses: Iterable[str], *, timeout: float = 30
) -> Any:
    """Poll the batch until its status is one of ``statuses`` (fails after ``timeout``)."""
    wanted = set(statuses)
    return await poll_until(
        lambda: client.batches.retrieve(batch_id), lambda b: b.status in wanted, timeout=timeout
    )


async def wait_status_json(
    api: httpx.AsyncClient, batch_id: str, status: str, *, timeout: float = 30
) -> dict[str, Any]:
    """``wait_status`` for plain HTTP clients: the batch's JSON once it has ``status``."""

    async def batch() -> dict[str, Any]:
        found: dict[str, Any] = (await api.get(f"/v1/batches/{batch_id}")).json()
        return found

    return await poll_until(batch, lambda b: b["status"] == status, timeout=timeout)


async def raw_post(
    url: str,
    path: str,
    headers: list[tuple[str, str]],
    chunks: Iterable[bytes],
    *,
    timeout: float = 30,
    host: str | None = None,
) -> tuple[int, bytes]:
    """POST ``chunks`` over a bare connection and return the answer's status and body.

    For answers that come before the body was sent (413 on a too large body): the sending
    stops quietly when the server closes the connection, and the answer is still read.
    ``headers`` without ``content-length`` send the body chunked. ``host``: the ``Host``
    header (default: the URL's).
    """
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    connection = h11.Connection(h11.CLIENT)
    names = {name.lower() for name, _ in headers}
    if "content-length" not in names:
        headers = [*headers, ("transfer-encoding", "chunked")]
    head = h11.Request(
        method="POST",
        target=path,
        headers=[("host", parts.netloc if host is None else host), *headers],
    )
    with trio.fail_after(timeout):
        stream = await trio.open_tcp_stream(parts.hostname, parts.port)
        async with stream, trio.open_nursery() as nursery:

            async def send() -> None:
                try:
                    await stream.send_all(connection.send(head) or b"")
                    for chunk in chunks:
                        await stream.send_all(connection.send(h11.Data(data=chunk)) or b"")
                    await stream.send_all(connection.send(h11.EndOfMessage()) or b"")
                except (trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError):
                    pass

            nursery.start_soon(send)
            status = 0
            body = b""
            while True:
                event = connection.next_event()
                if event is h11.NEED_DATA:
                    try:
                        data = await stream.receive_some(65536)
                    except trio.BrokenResourceError:
                        data = b""
                    connection.receive_data(data)
                    continue
                if isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    body += bytes(event.data)
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    break
            nursery.cancel_scope.cancel()
    return status, body


async def fusillade(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run ``python -m fusillade ARGS`` without the caller's ``FUSILLADE_*`` variables:
    (exit status, stdout, stderr)."""
    base = {k: v for k, v in os.environ.items() if not is_setting(k)}
    result = await trio.run_process(
        [sys.executable, "-m", "fusillade", *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env={**base, **(env or {})},
    )
    return result.returncode, result.stdout.decode(), result.stderr.decode()
