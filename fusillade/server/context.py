"""What every route needs: the repository, the settings, the keys, the daemon (if any)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeAlias, TypeVar

import anyio.to_thread
import attrs
from litestar.connection import ASGIConnection
from litestar.di import NamedDependency

from fusillade.config import ServerSettings
from fusillade.core.jsonl import JsonlLimits
from fusillade.runtime.daemon import Daemon
from fusillade.server.auth import HostPolicy, KeyRing
from fusillade.store.interface import Repository

R = TypeVar("R")


def utc_now() -> datetime:
    return datetime.now(UTC)


@attrs.frozen
class BodyTiming:
    """How long a request body may take: ``timeout`` seconds plus one second for every
    ``min_rate`` bytes received (``[server] body_read_timeout`` and ``body_min_rate``)."""

    timeout: float
    min_rate: int

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> BodyTiming:
        return cls(settings.body_read_timeout.total_seconds(), settings.body_min_rate)

    def deadline(self, start: float, received: int) -> float:
        """When the rest of a body started at ``start`` is late, ``received`` bytes in."""
        return start + self.timeout + received / self.min_rate


@attrs.define
class ServerContext:
    """Shared by every request of one server; repository calls go to worker threads."""

    repo: Repository
    settings: ServerSettings
    keys: KeyRing
    daemon: Daemon | None = None
    # empty: GET /metrics needs no key
    metrics_key: KeyRing = attrs.field(factory=functools.partial(KeyRing, ()))
    clock: Callable[[], datetime] = utc_now

    @functools.cached_property
    def hosts(self) -> HostPolicy:
        """Which ``Host`` and ``Origin`` headers requests may carry."""
        return HostPolicy.from_settings(self.settings, self.keys)

    @functools.cached_property
    def body_timing(self) -> BodyTiming:
        """How long a request body may take to arrive."""
        return BodyTiming.from_settings(self.settings)

    @property
    def upload_limits(self) -> JsonlLimits:
        s = self.settings
        return JsonlLimits(
            max_file_bytes=s.max_upload_bytes,
            max_line_bytes=s.max_line_bytes,
            max_lines=s.max_lines,
            allowed_endpoints=tuple(s.allowed_endpoints),
        )

    async def call(self, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> R:
        """``fn(*args, **kwargs)`` in a worker thread (repository calls block)."""
        return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))


def context_of(connection: ASGIConnection[Any, Any, Any, Any]) -> ServerContext:
    """The ``ServerContext`` of the application serving ``connection``."""
    ctx: ServerContext = connection.app.state["ctx"]
    return ctx


Owner: TypeAlias = NamedDependency[str]
"""A route parameter: the owner the request's bearer key acts for."""
Ctx: TypeAlias = NamedDependency[ServerContext]
"""A route parameter: the server's ``ServerContext``."""
