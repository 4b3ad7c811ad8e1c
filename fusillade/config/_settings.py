"""The shape of the configuration: frozen records with their defaults."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

from fusillade.core.jsonl import DEFAULT_ENDPOINTS
from fusillade.core.windows import parse_duration

if TYPE_CHECKING:
    from fusillade.runtime.config import DaemonConfig

MiB = 1024 * 1024


CONFIG_ENV = "FUSILLADE_CONFIG"  # names the file when no path is given
FLAGS = "command line"  # the source label of flags


@attrs.frozen
class ApiKey:
    """A bearer key accepted by the server: its value is read from ``key_env``."""

    key_env: str
    owner: str


@attrs.frozen
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    api_keys: tuple[ApiKey, ...] = ()
    max_upload_bytes: int = 200 * MiB
    max_lines: int = 50_000
    max_line_bytes: int = 8 * MiB
    allowed_endpoints: tuple[str, ...] = DEFAULT_ENDPOINTS
    completion_windows: tuple[str, ...] = ("24h",)
    max_request_bytes: int = 1 * MiB  # every route but uploads
    metrics_key_env: str | None = None  # None: GET /metrics needs no key
    # Host header values accepted besides loopback names; checked when no keys are
    # configured, or whenever this is set (docs/deployment.md, "Browsers")
    allowed_hosts: tuple[str, ...] = ()
    # a request body must arrive within body_read_timeout plus one second per
    # body_min_rate bytes received (else 408)
    body_read_timeout: str = "30s"
    body_min_rate: int = 16 * 1024


@attrs.frozen
class DaemonSettings:
    default_concurrency: int = 16
    heartbeat_interval: str = "5s"
    stale_after: str = "30s"
    poll_interval: str = "1s"
    request_timeout: str = "600s"
    shutdown_grace: str = "10s"
    max_attempts: int = 6
    backoff_base: str = "1s"
    backoff_cap: str = "60s"


@attrs.frozen
class UpstreamSettings:
    base_url: str
    api_key_env: str | None = None


@attrs.frozen
class ModelSettings:
    upstream: str | None = None  # None: the default upstream
    concurrency: int | None = None  # None: [daemon] default_concurrency


@attrs.frozen
class Settings:
    database_url: str | None = None
    data_dir: Path | None = None
    server: ServerSettings = ServerSettings()
    daemon: DaemonSettings = DaemonSettings()
    upstreams: Mapping[str, UpstreamSettings] = attrs.field(factory=dict)
    models: Mapping[str, ModelSettings] = attrs.field(factory=dict)
    # `--upstream URL`: every model not listed in [models] goes there
    default_upstream: str | None = None
    # where each value not at its default came from: a file name, a variable, FLAGS
    sources: Mapping[tuple[str, ...], str] = attrs.field(factory=dict, eq=False, repr=False)

    def daemon_config(self) -> DaemonConfig:
        """The runtime's ``DaemonConfig``: durations in seconds, upstreams and routing."""
        from fusillade.core.retry import RetryPolicy
        from fusillade.runtime.config import DaemonConfig, Upstream

        d = self.daemon
        return DaemonConfig(
            default_concurrency=d.default_concurrency,
            model_concurrency={
                m: s.concurrency for m, s in self.models.items() if s.concurrency is not None
            },
            upstreams={n: Upstream(u.base_url, u.api_key_env) for n, u in self.upstreams.items()},
            model_upstreams={m: s.upstream for m, s in self.models.items() if s.upstream},
            metric_models=frozenset(self.models),
            default_upstream=self.default_upstream,
            retry=RetryPolicy(
                max_attempts=d.max_attempts,
                base=parse_duration(d.backoff_base),
                cap=parse_duration(d.backoff_cap),
            ),
            request_timeout=_seconds(d.request_timeout),
            poll_interval=_seconds(d.poll_interval),
            heartbeat_interval=_seconds(d.heartbeat_interval),
            stale_after=_seconds(d.stale_after),
            shutdown_grace=_seconds(d.shutdown_grace),
        )


def _seconds(text: str) -> float:
    return parse_duration(text).total_seconds()
