"""What every route needs: the repository, the settings, the keys, the daemon (if any)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeAlias, TypeVar

import anyio.to_thread
import attrs
from litestar.di import NamedDependency

from fusillade.config import ServerSettings
from fusillade.core.jsonl import JsonlLimits
from fusillade.runtime.daemon import Daemon
from fusillade.server.auth import KeyRing
from fusillade.store.interface import Repository

R = TypeVar("R")


def utc_now() -> datetime:
    return datetime.now(UTC)


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


Owner: TypeAlias = NamedDependency[str]
"""A route parameter: the owner the request's bearer key acts for."""
Ctx: TypeAlias = NamedDependency[ServerContext]
"""A route parameter: the server's ``ServerContext``."""
