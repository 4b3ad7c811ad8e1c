"""Fixtures of the reliability scenarios: a real repository and the mock upstream."""

from __future__ import annotations

from collections.abc import AsyncIterator

import attrs
import httpx
import pytest
import trio
from upstream import mock_upstream_fixture  # noqa: F401 (registers ``mock_upstream``)

from fusillade.config import ServerSettings, Settings, UpstreamSettings
from fusillade.mock_upstream import MockUpstream
from fusillade.server.serve import Running, serve
from fusillade.store.postgres import PostgresRepository


@pytest.fixture
async def repo(database_url: str) -> AsyncIterator[PostgresRepository]:
    r = PostgresRepository(database_url, max_size=4)
    await trio.to_thread.run_sync(r.open)
    yield r
    await trio.to_thread.run_sync(r.close)


@pytest.fixture
async def api_server(
    nursery: trio.Nursery, database_url: str, mock_upstream: MockUpstream
) -> Running:
    """``fusillade serve`` in this process (no keys: owner ``default``), small upload limits,
    a daemon against the mock upstream."""
    settings = Settings(
        database_url=database_url,
        server=ServerSettings(
            host="127.0.0.1",
            port=0,
            max_upload_bytes=256 * 1024,
            max_line_bytes=64 * 1024,
            max_lines=100,
        ),
        upstreams={"mock": UpstreamSettings(mock_upstream.url)},
        default_upstream="mock",
    )
    config = attrs.evolve(settings.daemon_config(), poll_interval=0.1, cancel_check_interval=0.05)
    running: Running = await nursery.start(
        lambda task_status: serve(
            settings, daemon_config=config, migrate=False, task_status=task_status
        )
    )
    return running


@pytest.fixture
async def api(api_server: Running) -> AsyncIterator[httpx.AsyncClient]:
    assert api_server.url is not None
    async with httpx.AsyncClient(base_url=api_server.url, timeout=30) as c:
        yield c
