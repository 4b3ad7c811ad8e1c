"""``open_in_memory``: an engine on the in-memory repository, sending to a mock upstream."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta

import attrs
import trio

from fusillade.core.retry import RetryPolicy
from fusillade.engine import DEFAULT_OWNER, Engine, open
from fusillade.mock_upstream import MockConfig, MockUpstream, serve_mock_upstream
from fusillade.runtime.config import DaemonConfig, Upstream
from fusillade.store.memory import MemoryRepository

TEST_CONFIG = DaemonConfig(
    poll_interval=0.05,
    retry=RetryPolicy(base=timedelta(milliseconds=10), cap=timedelta(milliseconds=100)),
)
"""The daemon ``open_in_memory`` runs when given no configuration (see there)."""

# the name of the mock upstream in the configuration open_in_memory runs
_MOCK_UPSTREAM = "mock"


@attrs.frozen
class Harness:
    """What ``open_in_memory`` gives.

    Attributes:
        engine: the engine, on ``repository``, with a daemon running.
        upstream: the mock upstream every request goes to; its ``config`` can be changed
            at any time, its ``stats`` count what it saw, ``wait_until`` waits for them.
        repository: the in-memory repository.
    """

    engine: Engine
    upstream: MockUpstream
    repository: MemoryRepository


@contextlib.asynccontextmanager
async def open_in_memory(
    mock: MockConfig | None = None,
    config: DaemonConfig | None = None,
    *,
    owner: str = DEFAULT_OWNER,
) -> AsyncIterator[Harness]:
    """``fusillade.open`` on a fresh ``MemoryRepository``, every request sent to a mock upstream.

    Runs under trio (the mock upstream does). The daemon runs ``config`` with its routing
    replaced: every model goes to the mock upstream (``default_upstream``), except requests
    whose template names its own ``endpoint``. On exit the daemon shuts down gracefully
    and the mock upstream stops.

    Args:
        mock: how the mock upstream answers (``MockConfig()``, every request a success,
            when omitted); it stays live as ``harness.upstream.config``.
        config: the daemon's configuration, for its concurrency, retry policy and timeouts.
            When omitted: ``DaemonConfig``'s defaults, except that the daemon looks for new
            work every 50 ms (the in-memory repository sends no notifications) and retries
            after 10 ms, growing to 100 ms (``RetryPolicy(base=timedelta(milliseconds=10),
            cap=timedelta(milliseconds=100))``; an upstream's ``retry-after`` still counts,
            up to ``retry_after_ceiling``).
        owner: the owner the engine acts as.
    """
    repository = MemoryRepository()
    async with trio.open_nursery() as nursery:
        upstream: MockUpstream = await nursery.start(serve_mock_upstream, mock)
        routed = attrs.evolve(
            config if config is not None else TEST_CONFIG,
            upstreams={_MOCK_UPSTREAM: Upstream(upstream.url)},
            model_upstreams={},
            default_upstream=_MOCK_UPSTREAM,
        )
        async with open(repository=repository, config=routed, owner=owner) as engine:
            yield Harness(engine, upstream, repository)
        nursery.cancel_scope.cancel()
