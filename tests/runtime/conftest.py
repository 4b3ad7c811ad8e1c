"""Fixtures of the runtime tests: a real PostgreSQL repository and the mock upstream."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
from upstream import mock_upstream_fixture  # noqa: F401 (registers ``mock_upstream``)

from fusillade.store.postgres import PostgresRepository


@pytest.fixture
async def repo(database_url: str) -> AsyncIterator[PostgresRepository]:
    r = PostgresRepository(database_url, max_size=10)
    await trio.to_thread.run_sync(r.open)
    yield r
    await trio.to_thread.run_sync(r.close)
