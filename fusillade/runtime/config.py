"""Daemon settings and upstream routing."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from datetime import timedelta
from urllib.parse import urlsplit

import attrs

from fusillade.core.retry import DEFAULT_POLICY, RetryPolicy
from fusillade.core.scheduling.budget import BudgetLimits
from fusillade.core.webhooks import WebhookPolicy
from fusillade.metrics import OTHER_MODELS


@attrs.frozen
class Upstream:
    """An OpenAI-compatible server. The key is read from ``api_key_env`` at send time,
    so it is never stored, logged or returned."""

    base_url: str
    api_key_env: str | None = None
    # at most a few requests in flight until the first answer (docs/scheduling.md)
    slow_start: bool = True

    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None


@attrs.frozen
class Webhook:
    """Where one owner's batch events go (docs/webhooks.md). The signing secret(s) are
    read from ``secret_env`` at send time, like upstream keys; ``events`` None: all."""

    url: str
    secret_env: str
    events: frozenset[str] | None = None

    def secret(self) -> str | None:
        return os.environ.get(self.secret_env) or None

    def wants(self, event_type: str) -> bool:
        return self.events is None or event_type in self.events


def _names(names: Iterable[str]) -> frozenset[str]:
    return frozenset(names)


def _strings(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(values)


def _duration(value: timedelta | float) -> timedelta:
    """A ``timedelta`` as is; a number as that many seconds."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"a duration must be a timedelta or seconds, got {value!r}")
    return timedelta(seconds=value)


SENDERS = ("httpcore", "httptools")

# Models not named in the configuration that an upstream serves at full concurrency at
# once: a few is ordinary (clients choose the names), hundreds is a mistake or abuse.
UNNAMED_MODELS_PER_UPSTREAM = 8


@attrs.frozen
class DaemonConfig:
    """Everything a daemon needs besides the repository.

    Durations are ``timedelta`` (as in the configuration file); each also accepts a number
    of seconds, so ``DaemonConfig(poll_interval=0.05)`` and
    ``DaemonConfig(poll_interval=timedelta(milliseconds=50))`` are the same configuration,
    and the field holds the ``timedelta`` either way.

    Routing: a template's own ``endpoint`` wins; else ``model_upstreams[model]``; else
    ``default_upstream``. Concurrency is per daemon and per model
    (``model_concurrency``, else ``default_concurrency``).

    Budgets (docs/scheduling.md): ``upstream_budgets`` by upstream name and
    ``model_budgets`` by model name hold what the operator configured (the deployment's,
    shared between daemons); an upstream not named gets ``max_in_flight`` =
    ``default_concurrency`` plus the limits of the models routed to it, and a model not
    named learns its limits from its upstream's answers. ``owner_weights`` weigh owners'
    fair shares (default 1).

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
    request_timeout: timedelta = attrs.field(default=timedelta(seconds=600), converter=_duration)
    connect_timeout: timedelta = attrs.field(default=timedelta(seconds=10), converter=_duration)
    poll_interval: timedelta = attrs.field(default=timedelta(seconds=1), converter=_duration)
    heartbeat_interval: timedelta = attrs.field(default=timedelta(seconds=5), converter=_duration)
    stale_after: timedelta = attrs.field(default=timedelta(seconds=30), converter=_duration)
    maintenance_interval: timedelta = attrs.field(default=timedelta(seconds=5), converter=_duration)
    # [retention]: finished batches' requests are purged this long after they finished
    # (None: kept); stopped and dead daemons' rows this long after they stopped
    finished_batch_retention: timedelta | None = None
    stopped_daemon_retention: timedelta = attrs.field(
        default=timedelta(days=7), converter=_duration
    )
    # purge chunks (of purge_chunk rows each) per maintenance round at most
    purge_chunk: int = 1000
    purge_chunks_per_round: int = 50
    cancel_check_interval: timedelta = attrs.field(
        default=timedelta(seconds=0.5), converter=_duration
    )
    shutdown_grace: timedelta = attrs.field(default=timedelta(seconds=10), converter=_duration)
    # at most one log line per upstream this often about its 429s, 5xx, timeouts and
    # broken connections (runtime/upstream_trouble.py)
    trouble_interval: timedelta = attrs.field(default=timedelta(seconds=30), converter=_duration)
    flush_interval: timedelta = attrs.field(default=timedelta(seconds=0.05), converter=_duration)
    flush_max: int = 500
    db_write_concurrency: int = 2
    db_call_timeout: timedelta = attrs.field(default=timedelta(seconds=30), converter=_duration)
    connections_per_client: int = 4
    # what sends requests upstream: "httptools" (keep-alive pools on httptools' parser,
    # runtime/http1.py; chosen by measurement, docs/performance.md) or "httpcore"
    # (sharded httpcore pools, the sender before 0.2)
    sender: str = attrs.field(default="httptools", validator=attrs.validators.in_(SENDERS))
    # an http:// proxy for every upstream (runtime/http1.py) but the hosts in no_proxy
    # ("*", a host, a domain and its subdomains, optionally ":port"); httptools only
    # not in the repr: its URL may hold the proxy's password
    proxy: str | None = attrs.field(default=None, repr=False)
    no_proxy: tuple[str, ...] = attrs.field(default=(), converter=_strings)
    # times the claim loop may fail in a row before readiness turns false
    unhealthy_after_failures: int = 3
    upstream_budgets: Mapping[str, BudgetLimits] = attrs.field(factory=dict)
    model_budgets: Mapping[str, BudgetLimits] = attrs.field(factory=dict)
    owner_weights: Mapping[str, float] = attrs.field(factory=dict)
    default_max_output_tokens: int = 1024
    # webhooks by owner (docs/webhooks.md); one send's time limit (connect: at most 5s);
    # private, loopback and link-local targets allowed; when failed sends are retried
    webhooks: Mapping[str, Webhook] = attrs.field(factory=dict)
    webhook_timeout: timedelta = attrs.field(default=timedelta(seconds=15), converter=_duration)
    webhook_allow_private: bool = False
    webhook_policy: WebhookPolicy = attrs.field(factory=WebhookPolicy)

    def __attrs_post_init__(self) -> None:
        if self.proxy is not None:
            if self.sender != "httptools":
                raise ValueError('a proxy needs sender = "httptools"')
            if urlsplit(self.proxy).scheme != "http" or not urlsplit(self.proxy).hostname:
                raise ValueError("a proxy must be an http:// URL with a host")

    def upstream_name_for(self, model: str) -> str | None:
        name = self.model_upstreams.get(model, self.default_upstream)
        return name if name is not None and name in self.upstreams else None

    def upstream_for(self, model: str) -> Upstream | None:
        name = self.upstream_name_for(model)
        return self.upstreams[name] if name is not None else None

    def budget_limits(self, upstream: str, model: str | None) -> BudgetLimits:
        """The configured budget of an upstream (``model`` None) or of a model on it: the
        deployment's, shared between daemons."""
        own = self.upstream_budgets.get(upstream, BudgetLimits())
        if model is None:
            return own
        return self.model_budgets.get(model, BudgetLimits(share=own.share))

    def upstream_cap(self, upstream: str) -> int | None:
        """An upstream's in-flight cap per daemon when no ``max_in_flight`` is configured
        (None: it is): ``UNNAMED_MODELS_PER_UPSTREAM`` times ``default_concurrency`` for
        the models not configured, plus each configured model's own limit."""
        if self.upstream_budgets.get(upstream, BudgetLimits()).max_in_flight is not None:
            return None
        routed = [
            limit
            for m in {*self.model_concurrency, *self.model_budgets}
            if self.upstream_name_for(m) == upstream and (limit := self._model_cap(m)) is not None
        ]
        return UNNAMED_MODELS_PER_UPSTREAM * self.default_concurrency + sum(routed)

    def _model_cap(self, model: str) -> int | None:
        budget = self.model_budgets.get(model)
        if budget is not None and budget.max_in_flight is not None:
            return budget.max_in_flight
        return self.model_concurrency.get(model)

    def concurrency_for(self, model: str) -> int:
        return self.model_concurrency.get(model, self.default_concurrency)

    def metric_label(self, model: str) -> str:
        """The ``model`` label of ``model`` in the metrics: its name when configured, else
        ``"other"``; so the label set is bounded by the configuration."""
        if model in self.metric_models or model in self.model_concurrency:
            return model
        return model if model in self.model_upstreams else OTHER_MODELS
