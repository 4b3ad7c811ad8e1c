"""Loading the configuration: a TOML file, ``FUSILLADE_*`` environment variables, flags; flags win.

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

import json
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fusillade.config._schema import _NAMED, _SCHEMA, _Invalid
from fusillade.config._settings import (
    CONFIG_ENV,
    FLAGS,
    DaemonSettings,
    ModelSettings,
    ServerSettings,
    Settings,
    UpstreamSettings,
)
from fusillade.core.windows import parse_duration
from fusillade.errors import ConfigError

_Key = tuple[str, ...]  # ("server", "port"), ("models", NAME, "upstream")
_Layer = dict[_Key, tuple[object, str]]


def _toml_str(text: str) -> str:
    # JSON string escapes are valid TOML basic-string escapes; TOML also bans raw DEL.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


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
        try:
            path = Path(env[CONFIG_ENV]).expanduser()
        except RuntimeError:  # "~user" naming no user
            raise ConfigError(
                f"{CONFIG_ENV}: names a home directory that does not exist: {env[CONFIG_ENV]!r}"
            ) from None
    merged = _read_file(path) if path is not None else _Layer()
    merged.update(_read_env(env))
    merged.update(_read_flags(flags or {}))
    return _build(merged)
