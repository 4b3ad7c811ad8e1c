"""Daemon settings and upstream routing."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

import attrs

from fusillade.core.retry import DEFAULT_POLICY, RetryPolicy
from fusillade.metrics import OTHER_MODELS


@attrs.frozen
class Upstream:
    """An OpenAI-compatible server. The key is read from ``api_key_env`` at send time,
    so it is never stored, logged or returned."""

    base_url: str
    api_key_env: str | None = None

    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None


def _names(names: Iterable[str]) -> frozenset[str]:
    return frozenset(names)


@attrs.frozen
class DaemonConfig:
    """Everything a daemon needs besides the repository. Durations are seconds.

    Routing: a template's own ``endpoint`` wins; else ``model_upstreams[model]``; else
    ``default_upstream``. Concurrency is per daemon and per model
    (``model_concurrency``, else ``default_concurrency``).

    Metrics: a model is a label value by its own name only when the operator named it
    (a key of ``model_concurrency`` or ``model_upstreams``, or in ``metric_models``);
    every other model is counted under ``"other"`` (``metric_label``). Request bodies
    choose the model, so labelling them by it would let clients grow the metrics
    without bound and read each other's model names there.
    """

    default_concurrency: int = 16
    model_concurrency: Mapping[str, int] = attrs.field(factory=dict)
    upstreams: Mapping[str, Upstream] = attrs.field(factory=dict)
    model_upstreams: Mapping[str, str] = attrs.field(factory=dict)
    # models labelled by name in the metrics besides those routed or limited above
    metric_models: frozenset[str] = attrs.field(default=frozenset(), converter=_names)
    default_upstream: str | None = None
    retry: RetryPolicy = DEFAULT_POLICY
    request_timeout: float = 600.0
    connect_timeout: float = 10.0
    poll_interval: float = 1.0
    heartbeat_interval: float = 5.0
    stale_after: float = 30.0
    maintenance_interval: float = 5.0
    cancel_check_interval: float = 0.5
    shutdown_grace: float = 10.0
    flush_interval: float = 0.05
    flush_max: int = 500
    db_write_concurrency: int = 2
    db_call_timeout: float = 30.0
    connections_per_client: int = 16
    # times the claim loop may fail in a row before readiness turns false
    unhealthy_after_failures: int = 3

    def upstream_for(self, model: str) -> Upstream | None:
        name = self.model_upstreams.get(model, self.default_upstream)
        return self.upstreams.get(name) if name is not None else None

    def concurrency_for(self, model: str) -> int:
        return self.model_concurrency.get(model, self.default_concurrency)

    def metric_label(self, model: str) -> str:
        """The ``model`` label of ``model`` in the metrics: its name when configured, else
        ``"other"``; so the label set is bounded by the configuration."""
        if model in self.metric_models or model in self.model_concurrency:
            return model
        return model if model in self.model_upstreams else OTHER_MODELS
