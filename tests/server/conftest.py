"""The HTTP server under test: started on 127.0.0.1:0 in the test's nursery.

``start_server(...)`` starts ``fusillade.server.serve.serve`` against ``database_url`` with a
daemon routed to the mock upstream (fast poll intervals) and returns the ``Running`` handle;
``openai_client(running, key)`` is the official SDK's async client pointed at it (it runs
under trio: the SDK uses httpx through anyio).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any

import attrs
import httpx
import openai
import pytest
import trio
from serverkit import UPSTREAM_KEY, UPSTREAM_KEY_ENV, StartServer, openai_client, settings_for
from upstream import mock_upstream_fixture  # noqa: F401 (registers ``mock_upstream``)

from fusillade.config import ApiKey
from fusillade.mock_upstream import MockUpstream
from fusillade.server.serve import Running, serve


@pytest.fixture
def start_server(
    nursery: trio.Nursery, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> StartServer:
    """``await start_server(upstream_url, api_keys=..., run_daemon=..., **server_settings)``."""
    monkeypatch.setenv(UPSTREAM_KEY_ENV, UPSTREAM_KEY)

    async def start(
        upstream_url: str | None = None,
        *,
        api_keys: Iterable[ApiKey] = (),
        run_daemon: bool = True,
        **server: Any,
    ) -> Running:
        settings = settings_for(database_url, upstream_url, api_keys=api_keys, **server)
        config = attrs.evolve(
            settings.daemon_config(),
            poll_interval=0.1,
            cancel_check_interval=0.05,
            maintenance_interval=0.2,
        )
        running: Running = await nursery.start(
            lambda task_status: serve(
                settings,
                run_daemon=run_daemon,
                daemon_config=config,
                migrate=False,
                task_status=task_status,
            )
        )
        return running

    return start


@pytest.fixture
async def server(start_server: StartServer, mock_upstream: MockUpstream) -> Running:
    """A server (no keys: owner ``default``) with a daemon against the mock upstream."""
    return await start_server(mock_upstream.url)


@pytest.fixture
async def client(server: Running) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai_client(server) as c:
        yield c


@pytest.fixture
async def http(server: Running) -> AsyncIterator[httpx.AsyncClient]:
    """A plain httpx client on the server root (for what the SDK cannot send)."""
    assert server.url is not None
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
        yield c
