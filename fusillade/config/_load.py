"""Loading the configuration: a TOML file, ``FUSILLADE_*`` environment variables, flags; flags win.

Theory of operation: the sources are merged, in order, into one tree of plain values
(what a TOML file holds), remembering which source set each key path (a tuple such as
``("server", "port")`` or ``("models", "llama-3.1-8b", "upstream")``: model names contain
dots). Environment and flag text is read by its key's ``Rule`` on the way in. A cattrs
converter then structures the tree into ``Settings`` through the rules of ``_model``;
its first error (an unknown key first) becomes one ``ConfigError`` naming the source and
the key. Rules across keys run last.

The converter is not ``fusillade.serde``'s: a configuration is strict (unknown keys are
errors, nothing is coerced), the database rows and JSON bodies there are not.
"""

from __future__ import annotations

import argparse
import os
import tomllib
import typing
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs
import cattrs
from cattrs.errors import (
    AttributeValidationNote,
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
    IterableValidationNote,
)
from cattrs.gen import make_dict_structure_fn, make_mapping_structure_fn, override

from fusillade.config._model import (
    CONFIG_ENV,
    FLAGS,
    DaemonSettings,
    Invalid,
    Key,
    LogSettings,
    RetentionSettings,
    Rule,
    ServerSettings,
    Settings,
    UpstreamSettings,
    format_duration,
)
from fusillade.config._render import show_key, toml_key
from fusillade.errors import ConfigError
from fusillade.logs import FORMATS, LEVELS


class _NotTable(Exception):
    """A value where the model expects a table."""


def _rule(hint: object) -> Rule | None:
    """The ``Rule`` of an ``Annotated`` key type, else ``None``."""
    return next((m for m in getattr(hint, "__metadata__", ()) if isinstance(m, Rule)), None)


def _rules(cls: type) -> dict[str, Rule]:
    """The rule of each field of ``cls`` (through ``X | None``)."""
    out = {}
    for name, hint in typing.get_type_hints(cls, include_extras=True).items():
        for candidate in (hint, *typing.get_args(hint)):
            if rule := _rule(candidate):
                out[name] = rule
    return out


# the keys an environment variable or a flag may set: the top level, [server], [daemon],
# [log]
# [retention]
_FLAT = (
    ((), Settings),
    (("server",), ServerSettings),
    (("daemon",), DaemonSettings),
    (("log",), LogSettings),
    (("retention",), RetentionSettings),
)
KEYS: Mapping[Key, Rule] = {
    (*section, name): rule for section, cls in _FLAT for name, rule in _rules(cls).items()
}


def _tables(structure: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    def hook(value: Any, type_: Any) -> Any:
        if not isinstance(value, dict):
            raise _NotTable
        return structure(value, type_)

    return hook


def _record(cls: Any) -> Callable[[Any, Any], Any]:
    omit: dict[str, Any] = {"sources": override(omit=True)} if cls is Settings else {}
    return _tables(make_dict_structure_fn(cls, _converter, _cattrs_forbid_extra_keys=True, **omit))


def _ruled(hint: Any) -> Callable[[Any, Any], Any]:
    check = typing.cast(Rule, _rule(hint)).check
    return lambda value, _: check(value)


_converter = cattrs.Converter(detailed_validation=True)
_converter.register_structure_hook_factory(lambda t: _rule(t) is not None, _ruled)
_converter.register_structure_hook_factory(attrs.has, _record)


def _is_mapping(hint: Any) -> bool:
    return typing.get_origin(hint) is Mapping


_converter.register_structure_hook_factory(
    _is_mapping, lambda t: _tables(make_mapping_structure_fn(t, _converter))
)


# --- the tree of merged values ------------------------------------------------------------


@attrs.define
class _Tree:
    values: dict[str, Any] = attrs.field(factory=dict)
    sources: dict[Key, str] = attrs.field(factory=dict)

    def source(self, path: Key) -> str:
        while path and path not in self.sources:
            path = path[:-1]
        return self.sources.get(path, "the defaults")

    def put(self, path: Key, value: object, source: str) -> None:
        node = self.values
        for i in range(1, len(path)):
            node = node.setdefault(path[i - 1], {})
            if not isinstance(node, dict):
                raise self.error(path[:i], _NotTable())
            self.sources[path[:i]] = source  # the table exists, even when empty
        node[path[-1]] = value
        self.sources[path] = source

    def error(self, path: Key, problem: BaseException) -> ConfigError:
        if isinstance(problem, ForbiddenExtraKeysError):
            order = list(self.sources)  # the file's order
            key = min(problem.extra_fields, key=lambda k: order.index((*path, k)))
            path = (*path, key)
            return ConfigError(f"{self.source(path)}: unknown key {show_key(path)}")
        if isinstance(problem, _NotTable):
            return ConfigError(
                f"{self.source(path)}: [{'.'.join(map(toml_key, path))}] must be a table"
            )
        text = "required" if isinstance(problem, KeyError) else "invalid value"
        text = str(problem) if isinstance(problem, Invalid) else text
        return ConfigError(f"{self.source(path)}: {show_key(path)}: {text}")


def _read_file(path: Path, tree: _Tree) -> None:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read the configuration file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None

    def walk(prefix: Key, table: dict[str, Any]) -> None:
        for key, value in table.items():
            tree.sources[(*prefix, key)] = str(path)
            if isinstance(value, dict):
                walk((*prefix, key), value)

    walk((), data)
    tree.values = data


def _set_text(tree: _Tree, path: Key, text: str, source: str) -> None:
    try:
        value = KEYS[path].from_text(text)
    except Invalid as exc:
        raise ConfigError(f"{source}: {show_key(path)}: {exc}") from None
    tree.put(path, value, source)


def _shortcut(tree: _Tree, url: object, key_env: object, source: str) -> None:
    """``--upstream URL``: upstream ``default`` with that URL, used for every model."""
    if url is None:
        if key_env is not None:
            raise ConfigError(f"{source}: upstream_api_key_env needs upstream as well")
        return
    if source == FLAGS:  # name the flag, not the key it sets
        try:
            _rules(UpstreamSettings)["base_url"].check(url)
        except Invalid as exc:
            hint = f" such as http://{url}" if isinstance(url, str) and "://" not in url else ""
            raise ConfigError(f"{source}: --upstream: {exc}; give the scheme{hint}") from None
    tree.put(("default_upstream",), "default", source)
    tree.put(("upstreams", "default", "base_url"), url, source)
    if key_env is not None:
        tree.put(("upstreams", "default", "api_key_env"), key_env, source)


def _read_env(env: Mapping[str, str], tree: _Tree) -> None:
    url, key_env = env.get("FUSILLADE_UPSTREAM"), env.get("FUSILLADE_UPSTREAM_API_KEY_ENV")
    _shortcut(tree, url or None, key_env or None, "FUSILLADE_UPSTREAM")
    for path in KEYS:
        name = "_".join(["FUSILLADE", *path]).upper()
        if text := env.get(name):  # an empty variable counts as unset
            _set_text(tree, path, text, name)


# flags that set a key of the default upstream (`--rpm` is upstreams.<default>.rpm)
_UPSTREAM_FLAGS = ("max_in_flight", "rpm", "tpm")


def _default_upstream_limits(tree: _Tree, given: dict[str, object]) -> None:
    limits = {k: given.pop(f"upstream.{k}") for k in _UPSTREAM_FLAGS if f"upstream.{k}" in given}
    if not limits:
        return
    name = tree.values.get("default_upstream")
    if not isinstance(name, str):
        flag = "--" + next(iter(limits)).replace("_", "-")
        raise ConfigError(f"{FLAGS}: {flag} needs an upstream: give --upstream URL")
    for key, value in limits.items():
        tree.put(("upstreams", name, key), value, FLAGS)


def _read_flags(flags: Mapping[str, object], tree: _Tree) -> None:
    given = {k: v for k, v in flags.items() if v is not None}
    _shortcut(tree, given.pop("upstream", None), given.pop("upstream_api_key_env", None), FLAGS)
    _default_upstream_limits(tree, given)
    for dotted, value in given.items():
        path = tuple(dotted.split(".", 1))
        if path not in KEYS:
            raise ConfigError(f"{FLAGS}: unknown setting {dotted!r}")
        if isinstance(value, str):
            _set_text(tree, path, value, FLAGS)
        else:
            tree.put(path, value, FLAGS)


def _leaves(exc: BaseException, path: Key) -> Iterator[tuple[Key, BaseException]]:
    """The errors inside cattrs' validation errors, each with its key path."""
    for note in getattr(exc, "__notes__", ()):
        if isinstance(note, AttributeValidationNote):
            path = (*path, note.name)
        elif isinstance(note, IterableValidationNote):
            path = (*path, str(note.index))
    if isinstance(exc, ClassValidationError | IterableValidationError):
        for inner in exc.exceptions:
            yield from _leaves(inner, path)
    else:
        yield path, exc


def _structure(tree: _Tree) -> Settings:
    try:
        settings = _converter.structure(tree.values, Settings)
    except ClassValidationError as exc:
        leaves = list(_leaves(exc, ()))
        unknown = [leaf for leaf in leaves if isinstance(leaf[1], ForbiddenExtraKeysError)]
        path, problem = (unknown or leaves)[0]
        raise tree.error(path, problem) from None
    settings = attrs.evolve(settings, sources=tree.sources)
    _check(settings, tree)
    return settings


def _check(settings: Settings, tree: _Tree) -> None:
    """Rules across keys: routing names defined upstreams, the lease outlives a heartbeat."""
    defined = settings.upstreams
    named = [(("models", m, "upstream"), s.upstream) for m, s in settings.models.items()]
    for path, name in [*named, (("default_upstream",), settings.default_upstream)]:
        if name is not None and name not in defined:
            known = ", ".join(sorted(defined)) or "none"
            problem = f"no upstream named {name!r} in [upstreams] (defined: {known})"
            raise tree.error(path, Invalid(problem))
    proxy = settings.daemon.proxy
    if proxy is not None:
        if urlsplit(proxy).scheme != "http":
            problem = f"must be an http:// URL (a proxy reached over TLS is not supported), got {proxy.split('://')[0]}://"
            raise tree.error(("daemon", "proxy"), Invalid(problem))
        if settings.daemon.sender != "httptools":
            key = "sender" if ("daemon", "sender") in tree.sources else "proxy"
            problem = 'a proxy needs sender = "httptools" (the httpcore sender has none)'
            raise tree.error(("daemon", key), Invalid(problem))
    stale, beat = settings.daemon.stale_after, settings.daemon.heartbeat_interval
    if stale <= beat:
        key = "stale_after" if ("daemon", "stale_after") in tree.sources else "heartbeat_interval"
        problem = (
            f"stale_after {format_duration(stale)!r} must be longer than "
            f"heartbeat_interval {format_duration(beat)!r}"
        )
        raise tree.error(("daemon", key), Invalid(problem))


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
            values are skipped; strings are read as environment values are, other values
            as the file's (a duration may be a ``timedelta``). Also ``"upstream"`` (a
            URL: upstream ``default``, used for every model) and ``"upstream_api_key_env"``;
            ``"upstream.rpm"`` (``.tpm``, ``.max_in_flight``) set that key of the default
            upstream.

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
    tree = _Tree()
    if path is not None:
        _read_file(path, tree)
    _read_env(env, tree)
    _read_flags(flags or {}, tree)
    return _structure(tree)


# --- the command line -------------------------------------------------------------------


def add_arguments(
    parser: argparse.ArgumentParser, *, server: bool = True, daemon: bool = True
) -> None:
    """The configuration flags: ``--config``, the database, and the ``server``/``daemon`` ones.

    Every command that reads the configuration takes them (``config`` and ``serve`` all;
    ``run`` the daemon's; ``migrate`` and the remote commands the database's).
    """
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help=f"TOML configuration file (default: ${CONFIG_ENV})",
    )
    parser.add_argument(
        "--database-url",
        metavar="URL",
        help="PostgreSQL URL or conninfo (default: database_url, else the embedded PostgreSQL)",
    )
    parser.add_argument("--data-dir", metavar="DIR", help="local data (the embedded PostgreSQL)")
    if server:
        parser.add_argument("--host", help="address the server listens on")
        parser.add_argument("--port", type=int, help="port the server listens on")
    if daemon:
        parser.add_argument(
            "--concurrency",
            type=int,
            metavar="N",
            help="requests in flight per model (the --workers together)",
        )
        parser.add_argument("--upstream", metavar="URL", help="send every model to this server")
        parser.add_argument(
            "--workers",
            type=int,
            metavar="N",
            help="daemon processes sharing the work and the limits (default: [daemon] "
            "workers, else one per core up to 8; 1: a single process)",
        )
        parser.add_argument(
            "--max-in-flight",
            type=int,
            metavar="N",
            help="requests in flight to the upstream, all models and daemons together",
        )
        parser.add_argument(
            "--rpm", type=int, metavar="N", help="requests per minute the upstream allows"
        )
        parser.add_argument(
            "--tpm", type=int, metavar="N", help="tokens per minute the upstream allows"
        )
        parser.add_argument(
            "--api-key-env",
            metavar="NAME",
            help="variable holding the --upstream api key (default: OPENAI_API_KEY)",
        )
        # the commands that run a daemon log (docs/logging.md)
        parser.add_argument(
            "--log-level",
            choices=LEVELS,
            type=str.lower,
            help="log lines at this level and above (default: [log] level; serve: info, "
            "run: warning; debug also shows the embedded PostgreSQL's steps)",
        )
        parser.add_argument(
            "--log-format",
            choices=FORMATS,
            type=str.lower,
            help="text, or json: one object per line for log shippers (default: [log] format)",
        )


def settings_from_args(
    args: argparse.Namespace,
    env: Mapping[str, str] = os.environ,
    flags: Mapping[str, object] | None = None,
) -> Settings:
    """``load_settings`` with the flags of ``add_arguments``, and a command's own ``flags``."""
    upstream = getattr(args, "upstream", None)
    key_env = getattr(args, "api_key_env", None) or ("OPENAI_API_KEY" if upstream else None)
    given = {
        "database_url": args.database_url,
        "data_dir": args.data_dir,
        "server.host": getattr(args, "host", None),
        "server.port": getattr(args, "port", None),
        "daemon.default_concurrency": getattr(args, "concurrency", None),
        "daemon.workers": getattr(args, "workers", None),
        "upstream": upstream,
        "upstream_api_key_env": key_env,
        "upstream.max_in_flight": getattr(args, "max_in_flight", None),
        "upstream.rpm": getattr(args, "rpm", None),
        "upstream.tpm": getattr(args, "tpm", None),
        "log.level": getattr(args, "log_level", None),
        "log.format": getattr(args, "log_format", None),
    }
    return load_settings(args.config, env=env, flags={**given, **(flags or {})})
