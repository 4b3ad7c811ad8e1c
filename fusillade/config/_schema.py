"""How each key's value is checked: one ``_Kind`` per key, and the table of keys."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import attrs

from fusillade.config._settings import ApiKey
from fusillade.core.windows import parse_completion_window, parse_duration
from fusillade.errors import ConfigError, ValidationError
from fusillade.redact import mask_urls


class _Invalid(Exception):
    """What is wrong with a value; the caller adds the source and the key."""


@attrs.frozen
class _Kind:
    check: Callable[[object], object]  # a typed value -> the field's value, or _Invalid
    from_text: Callable[[str], object] = str  # environment/flag text -> a typed value


def _show(value: object) -> str:
    text = mask_urls(repr(value))
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
    path = Path(value if isinstance(value, Path) else _string(value))
    try:
        return path.expanduser()
    except RuntimeError:  # "~user" naming no user, or no home directory to expand "~" to
        raise _Invalid(f"names a home directory that does not exist: {_show(value)}") from None


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


_HOST = re.compile(
    r"(?:\*|(?:[a-z0-9_-]+(?:\.[a-z0-9_-]+)*\.?|\[[0-9a-f:.]+\])(?::[0-9]{1,5})?)",
    re.IGNORECASE,
)


def _hosts(value: object) -> object:
    # A list that may be empty (the default): "name", "name:port", "[v6]:port" or "*".
    if not isinstance(value, list | tuple):
        raise _Invalid(f"must be a list of host names, got {_show(value)}")
    for entry in value:
        if not isinstance(entry, str) or not _HOST.fullmatch(entry):
            raise _Invalid(
                f"each entry must be a host name, an address or '*', optionally with "
                f":port, got {_show(entry)}"
            )
    return tuple(value)


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
        "metrics_key_env": _Kind(_env_name),
        "allowed_hosts": _Kind(_hosts, _split),
        "body_read_timeout": _duration(positive=True),
        "body_min_rate": _POSITIVE,
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
