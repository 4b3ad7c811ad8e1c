"""The configuration as one typed model: frozen attrs records, their defaults and checks.

Each key's type is an ``Annotated`` alias carrying a ``Rule``: how a value from the file
is checked (and converted: a duration string becomes a ``timedelta``) and how the text of
an environment variable or a flag is read first. ``_load`` structures the merged layers
into ``Settings`` with cattrs through these rules; ``_render`` writes them back.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import urlsplit

import attrs

from fusillade.core.jsonl import DEFAULT_ENDPOINTS
from fusillade.core.windows import parse_completion_window, parse_duration
from fusillade.errors import ConfigError, ValidationError
from fusillade.redact import mask_urls

if TYPE_CHECKING:
    from fusillade.runtime.config import DaemonConfig

Key = tuple[str, ...]  # a key's path: ("server", "port"), ("models", NAME, "upstream")
CONFIG_ENV = "FUSILLADE_CONFIG"  # names the file when no path is given
FLAGS = "command line"  # the source label of flags
MiB = 1024 * 1024


class Invalid(Exception):
    """What is wrong with a value; the loader adds the source and the key."""


@attrs.frozen
class Rule:
    """How one key's value is checked: ``check(value) -> the field's value`` or ``Invalid``;
    ``from_text`` reads environment and flag text into what a TOML file would hold."""

    check: Callable[[Any], Any]
    from_text: Callable[[str], Any] = str


def _show(value: object) -> str:
    text = mask_urls(repr(value))
    return text if len(text) <= 60 else text[:57] + "..."


def _parsed_or_text(parse: Callable[[str], object]) -> Callable[[str], object]:
    """Environment or flag text read as a number; text that is not one stays text, for
    the rule's check to say what is wrong with it."""

    def from_text(text: str) -> object:
        try:
            return parse(text)
        except ValueError:
            return text

    return from_text


def _integer(low: int, high: int | None = None) -> Rule:
    def check(value: object) -> int:
        if type(value) is int and low <= value and (high is None or value <= high):
            return value
        bounds = f"from {low} to {high}" if high is not None else f">= {low}"
        raise Invalid(f"must be an integer {bounds}, got {_show(value)}")

    return Rule(check, _parsed_or_text(int))


def _positive_number(high: float) -> Rule:
    """A number (an integer or a float) above 0 and at most ``high``."""

    def check(value: object) -> float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
            if 0 < number <= high:
                return number
        raise Invalid(f"must be a number above 0 and at most {high:g}, got {_show(value)}")

    return Rule(check, _parsed_or_text(float))


def _boolean(value: object) -> bool:
    if isinstance(value, bool):
        return value
    raise Invalid(f"must be true or false, got {_show(value)}")


def _boolean_from_text(text: str) -> object:
    lowered = text.strip().lower()
    return {"true": True, "1": True, "false": False, "0": False}.get(lowered, text)


def _text(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise Invalid(f"must be a non-empty string, got {_show(value)}")
    return value


def _env_name(value: object) -> str:
    # Never echoed: a secret pasted here instead of a variable name must not reach a log.
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
        raise Invalid("must be the NAME of an environment variable (letters, digits, _)")
    return value


def _url(value: object) -> str:
    parts = urlsplit(_text(value))
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise Invalid(f"must be an http:// or https:// URL, got {_show(value)}")
    return str(value)


def _path(value: object) -> Path:
    path = Path(value if isinstance(value, Path) else _text(value))
    try:
        return path.expanduser()
    except RuntimeError:  # "~user" naming no user, or no home directory to expand "~" to
        raise Invalid(f"names a home directory that does not exist: {_show(value)}") from None


def _duration(*, positive: bool) -> Rule:
    """A ``timedelta`` from a string such as ``"5s"`` (``parse_duration``), or as is."""

    def check(value: object) -> timedelta:
        if isinstance(value, str):
            try:
                value = parse_duration(value)
            except ConfigError as exc:
                raise Invalid(str(exc)) from None
        if not isinstance(value, timedelta):
            raise Invalid(f"must be a duration string such as '5s', got {_show(value)}")
        if value < timedelta(0) or (positive and not value):
            raise Invalid(f"must be longer than 0s, got {format_duration(value)!r}")
        return value

    return Rule(check)


def format_duration(value: timedelta) -> str:
    """``value`` in seconds as ``parse_duration`` reads it back: ``"5s"``, ``"0.25s"``."""
    seconds = Decimal(value // timedelta(microseconds=1)).scaleb(-6).normalize()
    return f"{seconds:f}s"


def _split(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _strings(item: Callable[[str], object], *, empty: bool = False) -> Rule:
    def check(value: object) -> tuple[str, ...]:
        if not isinstance(value, list | tuple) or not (value or empty):
            what = "list" if empty else "non-empty list"
            raise Invalid(f"must be a {what} of strings, got {_show(value)}")
        for entry in value:
            if not isinstance(entry, str) or not entry:
                raise Invalid(f"must be a {'list' if empty else 'non-empty list'} of strings")
            item(entry)
        return tuple(value)

    return Rule(check, _split)


def _endpoint(text: str) -> None:
    if not text.startswith("/"):
        raise Invalid(f"endpoints start with '/', got {_show(text)}")


def _window(text: str) -> None:
    try:
        parse_completion_window(text)
    except ValidationError as exc:
        raise Invalid(exc.message) from None


_HOST = re.compile(
    r"(?:\*|(?:[a-z0-9_-]+(?:\.[a-z0-9_-]+)*\.?|\[[0-9a-f:.]+\])(?::[0-9]{1,5})?)",
    re.IGNORECASE,
)


def _event_type(text: str) -> None:
    from fusillade.core.webhooks import EVENT_TYPES

    if text not in EVENT_TYPES:
        raise Invalid(f"each entry must be one of {', '.join(EVENT_TYPES)}, got {_show(text)}")


def _host(text: str) -> None:
    # "name", "name:port", "[v6]:port" or "*"
    if not _HOST.fullmatch(text):
        raise Invalid(
            f"each entry must be a host name, an address or '*', optionally with :port, "
            f"got {_show(text)}"
        )


def _no_proxy_entry(text: str) -> None:
    # as allowed_hosts, and curl's ".domain" (the domain and its subdomains, like "domain")
    _host(text[1:] if text.startswith(".") and text != "." else text)


@attrs.frozen
class ApiKey:
    """A bearer key accepted by the server: its value is read from ``key_env``."""

    key_env: str
    owner: str


def _api_keys(value: object) -> tuple[ApiKey, ...]:
    if not isinstance(value, list | tuple):
        raise Invalid("must be a list of { key_env = ..., owner = ... } tables")
    keys: list[ApiKey] = []
    for entry in value:
        entry = attrs.asdict(entry) if isinstance(entry, ApiKey) else entry
        if not isinstance(entry, dict) or set(entry) != {"key_env", "owner"}:
            raise Invalid("each entry must be a table with exactly key_env and owner")
        try:
            keys.append(ApiKey(_env_name(entry["key_env"]), _text(entry["owner"])))
        except Invalid as exc:
            raise Invalid(f"entry {len(keys) + 1}: {exc}") from None
    if len({k.key_env for k in keys}) != len(keys):
        raise Invalid("the same key_env is listed twice")
    return tuple(keys)


def _api_keys_from_text(text: str) -> list[dict[str, str]]:
    # "alice=FUSILLADE_KEY_ALICE,bob=BOB_KEY": owner=variable pairs
    pairs = [item.partition("=") for item in _split(text)]
    if any(not sep for _, sep, _ in pairs):
        raise Invalid("expected owner=VARIABLE pairs separated by commas")
    return [{"owner": owner.strip(), "key_env": env.strip()} for owner, _, env in pairs]


def _choice(*allowed: str) -> Rule:
    """One of ``allowed``, in any case (kept in lower case)."""

    def check(value: object) -> str:
        if isinstance(value, str) and value.lower() in allowed:
            return value.lower()
        raise Invalid(f"must be one of {', '.join(allowed)}, got {_show(value)}")

    return Rule(check)


# The types of the keys. Each is its Python type to everything but the loader.
Text = Annotated[str, Rule(_text)]
Bool = Annotated[bool, Rule(_boolean, _boolean_from_text)]
EnvName = Annotated[str, Rule(_env_name)]
Url = Annotated[str, Rule(_url)]
LocalPath = Annotated[Path, Rule(_path)]
Port = Annotated[int, _integer(0, 65535)]  # 0: any free port (tests, ad-hoc runs)
Count = Annotated[int, _integer(1)]
Share = Annotated[float, _positive_number(1.0)]  # budget_share
Weight = Annotated[float, _positive_number(1e6)]
Duration = Annotated[timedelta, _duration(positive=True)]
LogLevel = Annotated[str, _choice("debug", "info", "warning", "error")]
LogFormat = Annotated[str, _choice("text", "json")]
SenderName = Annotated[str, _choice("httpcore", "httptools")]
Grace = Annotated[timedelta, _duration(positive=False)]  # a duration that may be 0s
Endpoints = Annotated[tuple[str, ...], _strings(_endpoint)]
Windows = Annotated[tuple[str, ...], _strings(_window)]
Hosts = Annotated[tuple[str, ...], _strings(_host, empty=True)]
ProxyExceptions = Annotated[tuple[str, ...], _strings(_no_proxy_entry, empty=True)]
EventTypes = Annotated[tuple[str, ...], _strings(_event_type)]
ApiKeys = Annotated[tuple[ApiKey, ...], Rule(_api_keys, _api_keys_from_text)]


@attrs.frozen
class ServerSettings:
    host: Text = "127.0.0.1"
    port: Port = 8000
    api_keys: ApiKeys = ()
    max_upload_bytes: Count = 200 * MiB
    max_lines: Count = 50_000
    max_line_bytes: Count = 8 * MiB
    allowed_endpoints: Endpoints = DEFAULT_ENDPOINTS
    completion_windows: Windows = ("24h",)
    max_request_bytes: Count = 1 * MiB  # every route but uploads
    metrics_key_env: EnvName | None = None  # None: GET /metrics needs no key
    # Host header values accepted besides loopback names; checked when no keys are
    # configured, or whenever this is set (docs/deployment.md, "Browsers")
    allowed_hosts: Hosts = ()
    # a request body must arrive within body_read_timeout plus one second per
    # body_min_rate bytes received (else 408)
    body_read_timeout: Duration = timedelta(seconds=30)
    body_min_rate: Count = 16 * 1024


@attrs.frozen
class DaemonSettings:
    default_concurrency: Count = 16
    heartbeat_interval: Duration = timedelta(seconds=5)
    stale_after: Duration = timedelta(seconds=30)
    poll_interval: Duration = timedelta(seconds=1)
    request_timeout: Duration = timedelta(seconds=600)
    shutdown_grace: Grace = timedelta(seconds=10)
    max_attempts: Count = 6
    backoff_base: Duration = timedelta(seconds=1)
    backoff_cap: Duration = timedelta(seconds=60)
    # a request's output estimate for the tpm budget when it names no max_tokens
    default_max_output_tokens: Count = 1024
    # webhooks (docs/webhooks.md): how long one send may take, and whether targets on
    # private, loopback and link-local addresses are allowed (off: refused, SSRF)
    webhook_timeout: Duration = timedelta(seconds=15)
    webhook_allow_private: Bool = False
    # daemon processes of `run` and `serve` (docs/deployment.md, "Workers"); None: one
    # per core. Limits stay the deployment's: per-model concurrency is split between them
    workers: Count | None = None
    # what sends requests upstream: "httptools" (runtime/http1.py) or "httpcore" (the
    # sender before 0.2, kept as a fallback)
    sender: SenderName = "httptools"
    # an http:// proxy for upstream requests, and the hosts reached without it
    # (docs/configuration.md, "Proxies"); needs sender = "httptools"
    proxy: Url | None = None
    no_proxy: ProxyExceptions = ()


@attrs.frozen
class LogSettings:
    # None: the command's own default (serve: info; run: warning, so the progress line
    # stays readable); docs/logging.md
    level: LogLevel | None = None
    format: LogFormat = "text"  # "json": one object per line, for log shippers


@attrs.frozen
class RetentionSettings:
    # the requests (results) of a finished batch are removed this long after it
    # finished; None: kept (docs/semantics.md, "Retention")
    finished_batches: Duration | None = None
    # stopped and dead daemons' rows are removed this long after they stopped
    stopped_daemons: Duration = timedelta(days=7)


DEFAULT_BUDGET_SHARE = 0.9


@attrs.frozen
class UpstreamSettings:
    base_url: Url
    api_key_env: EnvName | None = None
    # the deployment's budget for everything sent here (docs/scheduling.md); None: unset
    # (max_in_flight: [daemon] default_concurrency plus its models' own limits)
    max_in_flight: Count | None = None
    rpm: Count | None = None
    tpm: Count | None = None
    # the part of limits learned from the provider's answers fusillade may use
    budget_share: Share = DEFAULT_BUDGET_SHARE
    # at most 4 requests in flight until the first answer (its headers set the budget)
    slow_start: Bool = True


@attrs.frozen
class ModelSettings:
    upstream: Text | None = None  # None: the default upstream
    concurrency: Count | None = None  # None: [daemon] default_concurrency (per daemon)
    # the deployment's budget for this model on its upstream; None: unset
    max_in_flight: Count | None = None
    rpm: Count | None = None
    tpm: Count | None = None


@attrs.frozen
class OwnerSettings:
    weight: Weight = 1.0  # fair-share weight between owners (docs/scheduling.md)


@attrs.frozen
class WebhookSettings:
    """Where an owner's batch events go (docs/webhooks.md); the signing secret(s) are
    read from ``secret_env`` at send time."""

    url: Url
    secret_env: EnvName
    events: EventTypes | None = None  # None: every event type


@attrs.frozen
class Settings:
    database_url: Text | None = None
    data_dir: LocalPath | None = None
    default_upstream: Text | None = None  # `--upstream URL`: "default"
    server: ServerSettings = ServerSettings()
    daemon: DaemonSettings = DaemonSettings()
    log: LogSettings = LogSettings()
    retention: RetentionSettings = RetentionSettings()
    upstreams: Mapping[str, UpstreamSettings] = attrs.field(factory=dict)
    models: Mapping[str, ModelSettings] = attrs.field(factory=dict)
    owners: Mapping[str, OwnerSettings] = attrs.field(factory=dict)
    webhooks: Mapping[str, WebhookSettings] = attrs.field(factory=dict)
    # where each value not at its default came from: a file name, a variable, FLAGS
    sources: Mapping[tuple[str, ...], str] = attrs.field(factory=dict, eq=False, repr=False)

    def _share_of(self, model: ModelSettings) -> float:
        """The ``budget_share`` of the upstream serving ``model``."""
        upstream = self.upstreams.get(model.upstream or self.default_upstream or "")
        if upstream is None:
            return DEFAULT_BUDGET_SHARE
        return upstream.budget_share

    def daemon_config(self) -> DaemonConfig:
        """The runtime's ``DaemonConfig``; the one place it is made from the settings."""
        from fusillade.core.retry import RetryPolicy
        from fusillade.core.scheduling.budget import BudgetLimits
        from fusillade.runtime.config import DaemonConfig, Upstream, Webhook

        d = self.daemon
        return DaemonConfig(
            default_concurrency=d.default_concurrency,
            model_concurrency={
                m: s.concurrency for m, s in self.models.items() if s.concurrency is not None
            },
            upstreams={
                n: Upstream(u.base_url, u.api_key_env, slow_start=u.slow_start)
                for n, u in self.upstreams.items()
            },
            model_upstreams={m: s.upstream for m, s in self.models.items() if s.upstream},
            metric_models=frozenset(self.models),
            default_upstream=self.default_upstream,
            retry=RetryPolicy(max_attempts=d.max_attempts, base=d.backoff_base, cap=d.backoff_cap),
            request_timeout=d.request_timeout,
            poll_interval=d.poll_interval,
            heartbeat_interval=d.heartbeat_interval,
            stale_after=d.stale_after,
            # reclaim at least twice per stale_after (a short one: tests, `run --stale-after`)
            maintenance_interval=min(timedelta(seconds=5), d.stale_after / 2),
            shutdown_grace=d.shutdown_grace,
            upstream_budgets={
                n: BudgetLimits(u.max_in_flight, u.rpm, u.tpm, share=u.budget_share)
                for n, u in self.upstreams.items()
            },
            model_budgets={
                m: BudgetLimits(s.max_in_flight, s.rpm, s.tpm, share=self._share_of(s))
                for m, s in self.models.items()
                if (s.max_in_flight, s.rpm, s.tpm) != (None, None, None)
            },
            owner_weights={o: s.weight for o, s in self.owners.items()},
            default_max_output_tokens=d.default_max_output_tokens,
            webhooks={
                o: Webhook(w.url, w.secret_env, None if w.events is None else frozenset(w.events))
                for o, w in self.webhooks.items()
            },
            webhook_timeout=d.webhook_timeout,
            webhook_allow_private=d.webhook_allow_private,
            sender=d.sender,
            proxy=d.proxy,
            no_proxy=d.no_proxy,
            finished_batch_retention=self.retention.finished_batches,
            stopped_daemon_retention=self.retention.stopped_daemons,
        )
