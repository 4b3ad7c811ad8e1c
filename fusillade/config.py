"""Configuration: a TOML file, ``FUSILLADE_*`` environment variables, flags; flags win.

The shape is fixed by docs/configuration.md (every key, its default and its variable).
Secrets are never values here: api keys are named by the environment variable that holds
them (``key_env``, ``api_key_env``) and read when used.

Theory of operation: each source becomes a *layer*, a flat ``{path: (value, source)}``
dict where a path is ``("server", "port")`` or ``("models", "llama-3.1-8b", "upstream")``
(tuples, because model names contain dots). Text from the environment or the command line
is parsed per key on the way in. The layers are merged (later wins), each value is checked
by its key's ``_Kind``, and cross-key rules run last. Every error names the source and the
key.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import attrs

from fusillade.core.jsonl import DEFAULT_ENDPOINTS
from fusillade.core.windows import parse_completion_window, parse_duration
from fusillade.errors import ConfigError, ValidationError

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


# --- kinds: how one key's value is checked ----------------------------------------------


class _Invalid(Exception):
    """What is wrong with a value; the caller adds the source and the key."""


@attrs.frozen
class _Kind:
    check: Callable[[object], object]  # a typed value -> the field's value, or _Invalid
    from_text: Callable[[str], object] = str  # environment/flag text -> a typed value


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _integer(low: int, high: int | None = None) -> _Kind:
    def check(value: object) -> object:
        if type(value) is int and low <= value and (high is None or value <= high):
            return value
        bounds = f"from {low} to {high}" if high is not None else f">= {low}"
        raise _Invalid(f"must be an integer {bounds}, got {_show(value)}")

    def from_text(text: str) -> object:
        try:
            return int(text)
        except ValueError:
            return text  # check() says what is wrong

    return _Kind(check, from_text)


def _string(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise _Invalid(f"must be a non-empty string, got {_show(value)}")
    return value


def _env_name(value: object) -> str:
    # Never echoed: a secret pasted here instead of a variable name must not reach a log.
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
        raise _Invalid("must be the NAME of an environment variable (letters, digits, _)")
    return value


def _url(value: object) -> str:
    parts = urlsplit(_string(value))
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise _Invalid(f"must be an http:// or https:// URL, got {_show(value)}")
    return str(value)


def _path(value: object) -> Path:
    return Path(value if isinstance(value, Path) else _string(value)).expanduser()


def _duration(*, positive: bool) -> _Kind:
    def check(value: object) -> object:
        if not isinstance(value, str):
            raise _Invalid(f"must be a duration string such as '5s', got {_show(value)}")
        try:
            parsed = parse_duration(value)
        except ConfigError as exc:
            raise _Invalid(str(exc)) from None
        if positive and parsed <= timedelta(0):
            raise _Invalid(f"must be longer than 0s, got {value!r}")
        return value

    return _Kind(check)


def _split(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _strings(item: Callable[[str], object]) -> _Kind:
    def check(value: object) -> object:
        if not isinstance(value, list | tuple) or not value:
            raise _Invalid(f"must be a non-empty list of strings, got {_show(value)}")
        for entry in value:
            item(_string(entry))
        return tuple(value)

    return _Kind(check, _split)


def _endpoint(text: str) -> None:
    if not text.startswith("/"):
        raise _Invalid(f"endpoints start with '/', got {_show(text)}")


def _window(text: str) -> None:
    try:
        parse_completion_window(text)
    except ValidationError as exc:
        raise _Invalid(exc.message) from None


def _api_keys(value: object) -> object:
    if not isinstance(value, list | tuple):
        raise _Invalid("must be a list of { key_env = ..., owner = ... } tables")
    keys = []
    for entry in value:
        entry = attrs.asdict(entry) if isinstance(entry, ApiKey) else entry
        if not isinstance(entry, dict) or set(entry) != {"key_env", "owner"}:
            raise _Invalid("each entry must be a table with exactly key_env and owner")
        try:
            keys.append(ApiKey(_env_name(entry["key_env"]), _string(entry["owner"])))
        except _Invalid as exc:
            raise _Invalid(f"entry {len(keys) + 1}: {exc}") from None
    names = [k.key_env for k in keys]
    if len(set(names)) != len(names):
        raise _Invalid("the same key_env is listed twice")
    return tuple(keys)


def _api_keys_from_text(text: str) -> object:
    # "alice=FUSILLADE_KEY_ALICE,bob=BOB_KEY": owner=variable pairs
    pairs = [item.partition("=") for item in _split(text)]
    if any(not sep for _, sep, _ in pairs):
        raise _Invalid("expected owner=VARIABLE pairs separated by commas")
    return [{"owner": owner.strip(), "key_env": env.strip()} for owner, _, env in pairs]


_STR = _Kind(_string)
_POSITIVE = _integer(1)
_SCHEMA: Mapping[str, Mapping[str, _Kind]] = {
    "": {"database_url": _STR, "data_dir": _Kind(_path), "default_upstream": _STR},
    "server": {
        "host": _STR,
        "port": _integer(0, 65535),  # 0: any free port (tests, ad-hoc runs)
        "api_keys": _Kind(_api_keys, _api_keys_from_text),
        "max_upload_bytes": _POSITIVE,
        "max_lines": _POSITIVE,
        "max_line_bytes": _POSITIVE,
        "allowed_endpoints": _strings(_endpoint),
        "completion_windows": _strings(_window),
        "max_request_bytes": _POSITIVE,
    },
    "daemon": {
        "default_concurrency": _POSITIVE,
        "heartbeat_interval": _duration(positive=True),
        "stale_after": _duration(positive=True),
        "poll_interval": _duration(positive=True),
        "request_timeout": _duration(positive=True),
        "shutdown_grace": _duration(positive=False),
        "max_attempts": _POSITIVE,
        "backoff_base": _duration(positive=True),
        "backoff_cap": _duration(positive=True),
    },
    "upstreams": {"base_url": _Kind(_url), "api_key_env": _Kind(_env_name)},
    "models": {"upstream": _STR, "concurrency": _POSITIVE},
}
_NAMED = ("upstreams", "models")  # sections of [SECTION.NAME] tables

# --- layers -----------------------------------------------------------------------------

_Key = tuple[str, ...]  # ("server", "port"), ("models", NAME, "upstream")
_Layer = dict[_Key, tuple[object, str]]


def _toml_key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else _toml_str(name)


def _show_key(path: _Key) -> str:
    if len(path) == 1:
        return path[0]
    table = ".".join(_toml_key(p) for p in path[:-1])
    return f"[{table}] {path[-1]}"


def _error(source: str, path: _Key, problem: object) -> ConfigError:
    return ConfigError(f"{source}: {_show_key(path)}: {problem}")


def _table(value: object, source: str, path: _Key) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: [{'.'.join(map(_toml_key, path))}] must be a table")
    return value


def _read_file(path: Path) -> _Layer:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read the configuration file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    source, layer = str(path), _Layer()

    def add(keys: _Key, table: Mapping[str, object]) -> None:
        section = keys[0] if keys else ""
        for key, value in table.items():
            if key not in _SCHEMA[section]:
                raise ConfigError(f"{source}: unknown key {_show_key((*keys, key))}")
            layer[(*keys, key)] = (value, source)

    for key, value in data.items():
        if key in ("server", "daemon"):
            add((key,), _table(value, source, (key,)))
        elif key in _NAMED:
            for name, entry in _table(value, source, (key,)).items():
                layer[(key, name)] = (None, source)  # the table exists, even when empty
                add((key, name), _table(entry, source, (key, name)))
        else:
            add((), {key: value})
    return layer


def _from_text(layer: _Layer, path: _Key, text: str, source: str) -> None:
    kind = _SCHEMA[path[0] if len(path) > 1 else ""][path[-1]]
    try:
        layer[path] = (kind.from_text(text), source)
    except _Invalid as exc:
        raise _error(source, path, exc) from None


def _shortcut(layer: _Layer, url: object, key_env: object, source: str) -> None:
    """``--upstream URL``: upstream ``default`` with that URL, used for every model."""
    if url is None:
        if key_env is not None:
            raise ConfigError(f"{source}: upstream_api_key_env needs upstream as well")
        return
    layer[("upstreams", "default")] = (None, source)
    layer[("default_upstream",)] = ("default", source)
    layer[("upstreams", "default", "base_url")] = (url, source)
    if key_env is not None:
        layer[("upstreams", "default", "api_key_env")] = (key_env, source)


def _read_env(env: Mapping[str, str]) -> _Layer:
    layer = _Layer()
    url, key_env = env.get("FUSILLADE_UPSTREAM"), env.get("FUSILLADE_UPSTREAM_API_KEY_ENV")
    _shortcut(layer, url or None, key_env or None, "FUSILLADE_UPSTREAM")
    for section in ("", "server", "daemon"):
        for key in _SCHEMA[section]:
            path = (section, key) if section else (key,)
            name = "_".join(["FUSILLADE", *path]).upper()
            if text := env.get(name):  # an empty variable counts as unset
                _from_text(layer, path, text, name)
    return layer


def _read_flags(flags: Mapping[str, object]) -> _Layer:
    given = {k: v for k, v in flags.items() if v is not None}
    layer = _Layer()
    _shortcut(layer, given.pop("upstream", None), given.pop("upstream_api_key_env", None), FLAGS)
    for dotted, value in given.items():
        path = tuple(dotted.split(".", 1))
        section = path[0] if len(path) == 2 else ""
        if section not in ("", "server", "daemon") or path[-1] not in _SCHEMA[section]:
            raise ConfigError(f"{FLAGS}: unknown setting {dotted!r}")
        if isinstance(value, str):
            _from_text(layer, path, value, FLAGS)
        else:
            layer[path] = (value, FLAGS)
    return layer


# --- building and checking --------------------------------------------------------------


def _build(merged: _Layer) -> Settings:
    def fields(prefix: _Key) -> dict[str, Any]:
        out: dict[str, Any] = {}
        kinds = _SCHEMA[prefix[0] if prefix else ""]
        for key, kind in kinds.items():
            path = (*prefix, key)
            if path in merged:
                value, source = merged[path]
                try:
                    out[key] = kind.check(value)
                except _Invalid as exc:
                    raise _error(source, path, exc) from None
        return out

    named: dict[str, dict[str, Any]] = {section: {} for section in _NAMED}
    for path, (_, source) in merged.items():
        if len(path) == 2 and path[0] in _NAMED:
            entry = fields(path)
            if path[0] == "upstreams" and "base_url" not in entry:
                raise _error(source, (*path, "base_url"), "required")
            cls = UpstreamSettings if path[0] == "upstreams" else ModelSettings
            named[path[0]][path[1]] = cls(**entry)
    settings = Settings(
        **fields(()),
        server=ServerSettings(**fields(("server",))),
        daemon=DaemonSettings(**fields(("daemon",))),
        upstreams=named["upstreams"],
        models=named["models"],
        sources={path: source for path, (_, source) in merged.items()},
    )
    _check(settings)
    return settings


def _check(settings: Settings) -> None:
    """Rules across keys: routing names defined upstreams, the lease outlives a heartbeat."""
    sources, defined = settings.sources, settings.upstreams
    named = [(("models", m, "upstream"), s.upstream) for m, s in settings.models.items()]
    for path, name in [*named, (("default_upstream",), settings.default_upstream)]:
        if name is not None and name not in defined:
            known = ", ".join(sorted(defined)) or "none"
            problem = f"no upstream named {name!r} in [upstreams] (defined: {known})"
            raise _error(sources[path], path, problem)
    d = settings.daemon
    if parse_duration(d.stale_after) <= parse_duration(d.heartbeat_interval):
        path = (
            "daemon",
            "stale_after" if ("daemon", "stale_after") in sources else "heartbeat_interval",
        )
        problem = f"stale_after {d.stale_after!r} must be longer than heartbeat_interval"
        raise _error(sources[path], path, f"{problem} {d.heartbeat_interval!r}")


def load_settings(
    path: Path | None = None,
    *,
    env: Mapping[str, str] = os.environ,
    flags: Mapping[str, object] | None = None,
) -> Settings:
    """The effective settings: defaults, then the file, the environment, the flags.

    Args:
        path: a TOML file; ``None`` reads the file named by ``$FUSILLADE_CONFIG`` if set.
        env: where ``FUSILLADE_*`` variables are read (unknown ones are ignored).
        flags: dotted keys (``"server.port"``, ``"database_url"``) to values; ``None``
            values are skipped; strings are parsed as environment values are. Also
            ``"upstream"`` (a URL: upstream ``default``, used for every model) and
            ``"upstream_api_key_env"``.

    Raises:
        ConfigError: an unreadable file, an unknown key in the file or the flags, or a bad
            value; the message names the source and the key.
    """
    if path is None and env.get(CONFIG_ENV):
        path = Path(env[CONFIG_ENV]).expanduser()
    merged = _read_file(path) if path is not None else _Layer()
    merged.update(_read_env(env))
    merged.update(_read_flags(flags or {}))
    return _build(merged)


# --- rendering --------------------------------------------------------------------------


def _toml_str(text: str) -> str:
    # JSON string escapes are valid TOML basic-string escapes; TOML also bans raw DEL.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _mask_url(url: str) -> str:
    """``database_url`` without its password (URL userinfo or a ``password=`` parameter).

    Errs towards masking too much: everything from the user's ``:`` to the last ``@``.
    """
    url = re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&]+)", r"\1***", url)
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://[^:/?#@]*):.*@", r"\1:***@", url)


def render(settings: Settings, *, env: Mapping[str, str] = os.environ) -> str:
    """The effective configuration as TOML that ``load_settings`` reads back.

    Secrets are masked: api keys show the variable's name and ``# set`` or ``# NOT SET``,
    never its value; a password in ``database_url`` becomes ``***``. A ``# from ...``
    comment names the source of each value that is not a default.
    """
    out = ["# fusillade: effective configuration (secrets masked)"]

    def note(path: _Key, *extra: str) -> str:
        source = settings.sources.get(path)
        notes = [*extra, f"from {source}"] if source else list(extra)
        return f"  # {'; '.join(notes)}" if notes else ""

    def is_set(name: str) -> str:
        return "set" if env.get(name) else "NOT SET"

    def emit(prefix: _Key, values: Mapping[str, object]) -> None:
        for key, value in values.items():
            path = (*prefix, key)
            if value is None:
                out.append(f"# {key}: not set{note(path)}")
            elif key == "api_keys" and isinstance(value, tuple):
                out.append(f"{key} = [{note(path)}")
                for k in value:
                    line = f"{{ key_env = {_toml_str(k.key_env)}, owner = {_toml_str(k.owner)} }}"
                    out.append(f"  {line},  # {is_set(k.key_env)}")
                out.append("]")
            else:
                extra = [is_set(value)] if key == "api_key_env" and isinstance(value, str) else []
                out.append(f"{key} = {_value(key, value)}{note(path, *extra)}")

    emit((), {k: getattr(settings, k) for k in _SCHEMA[""]})
    for section in ("server", "daemon"):
        out.append(f"\n[{section}]")
        emit((section,), attrs.asdict(getattr(settings, section), recurse=False))
    for section in _NAMED:
        table: Mapping[str, Any] = getattr(settings, section)
        for name, entry in table.items():
            out.append(f"\n[{section}.{_toml_key(name)}]")
            emit((section, name), attrs.asdict(entry))
    return "\n".join(out) + "\n"


def _value(key: str, value: object) -> str:
    if isinstance(value, int):
        return str(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_str(str(v)) for v in value) + "]"
    text = str(value)
    return _toml_str(_mask_url(text) if key == "database_url" else text)


# --- command-line flags -----------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by the commands that read the configuration (``config``, ``serve``)."""
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help=f"TOML configuration file (default: ${CONFIG_ENV})",
    )
    parser.add_argument("--database-url", metavar="URL", help="PostgreSQL URL or conninfo")
    parser.add_argument("--data-dir", metavar="DIR", help="local data (the embedded PostgreSQL)")
    parser.add_argument("--host", help="address the server listens on")
    parser.add_argument("--port", type=int, help="port the server listens on")
    parser.add_argument("--concurrency", type=int, metavar="N", help="requests in flight per model")
    parser.add_argument("--upstream", metavar="URL", help="send every model to this server")
    parser.add_argument(
        "--api-key-env",
        metavar="NAME",
        help="variable holding the --upstream api key (default: OPENAI_API_KEY)",
    )


def settings_from_args(args: argparse.Namespace, env: Mapping[str, str] = os.environ) -> Settings:
    """``load_settings`` with the flags of ``add_arguments``."""
    key_env = args.api_key_env or ("OPENAI_API_KEY" if args.upstream else None)
    flags = {
        "database_url": args.database_url,
        "data_dir": args.data_dir,
        "server.host": args.host,
        "server.port": args.port,
        "daemon.default_concurrency": args.concurrency,
        "upstream": args.upstream,
        "upstream_api_key_env": key_env,
    }
    return load_settings(args.config, env=env, flags=flags)
