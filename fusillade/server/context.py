"""What every route needs: the engine, the settings, the keys.

Routes are adapters over the engine (``fusillade.engine``): they read the HTTP request,
call one of its methods as the caller's owner and shape the answer.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any, TypeAlias

import attrs
from litestar.connection import ASGIConnection
from litestar.di import NamedDependency
from litestar.params import HeaderParameter

from fusillade.config import ServerSettings
from fusillade.core.idempotency import HEADER, MAX_KEY_CHARS
from fusillade.core.jsonl import JsonlLimits
from fusillade.engine import Engine, Rules
from fusillade.runtime.daemon import Daemon
from fusillade.server.auth import HostPolicy, KeyRing
from fusillade.server.workers import Workers


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


def upload_limits(settings: ServerSettings) -> JsonlLimits:
    """The limits of an uploaded input file (``[server]`` ``max_upload_bytes`` ...)."""
    return JsonlLimits(
        max_file_bytes=settings.max_upload_bytes,
        max_line_bytes=settings.max_line_bytes,
        max_lines=settings.max_lines,
        allowed_endpoints=tuple(settings.allowed_endpoints),
    )


def server_rules(settings: ServerSettings) -> Rules:
    """What a server's engine accepts: its upload limits, endpoints and windows."""
    return Rules(
        limits=upload_limits(settings),
        endpoints=tuple(settings.allowed_endpoints),
        completion_windows=tuple(settings.completion_windows),
    )


@attrs.define
class ServerContext:
    """Shared by every request of one server.

    ``engine`` is given the server's rules (``server_rules(settings)``), whatever rules
    it came with: the settings are the one source of what the API accepts.
    """

    engine: Engine
    settings: ServerSettings
    keys: KeyRing
    # empty: GET /metrics needs no key
    metrics_key: KeyRing = attrs.field(factory=functools.partial(KeyRing, ()))
    # the daemons in worker processes (``--workers``), whose metrics /metrics adds up
    workers: Workers | None = None

    def __attrs_post_init__(self) -> None:
        self.engine = self.engine.with_rules(server_rules(self.settings))

    @property
    def daemon(self) -> Daemon | None:
        """The daemon running in this process, if any (``/readyz`` asks it)."""
        return self.engine.daemon

    @functools.cached_property
    def hosts(self) -> HostPolicy:
        """Which ``Host`` and ``Origin`` headers requests may carry."""
        return HostPolicy.from_settings(self.settings, self.keys)

    @functools.cached_property
    def body_timing(self) -> BodyTiming:
        """How long a request body may take to arrive."""
        return BodyTiming.from_settings(self.settings)

    def engine_for(self, owner: str) -> Engine:
        """The engine acting for ``owner`` (the caller's key)."""
        return self.engine.for_owner(owner)


def context_of(connection: ASGIConnection[Any, Any, Any, Any]) -> ServerContext:
    """The ``ServerContext`` of the application serving ``connection``."""
    ctx: ServerContext = connection.app.state["ctx"]
    return ctx


Owner: TypeAlias = NamedDependency[str]
"""A route parameter: the owner the request's bearer key acts for."""
Ctx: TypeAlias = NamedDependency[ServerContext]
"""A route parameter: the server's ``ServerContext``."""
IdempotencyKeyHeader: TypeAlias = Annotated[
    str | None,
    HeaderParameter(
        name=HEADER,
        description=f"1 to {MAX_KEY_CHARS} characters, unique per logical request: a retry "
        "with the same key and the same request answers with the object the first one "
        "created (as it is now) and creates nothing; a different request under the key "
        "is a 409. Keys are per owner and forgotten after 24 hours (docs/api.md).",
    ),
]
"""A route parameter: the request's ``Idempotency-Key`` header, if any."""
