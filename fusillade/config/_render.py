"""The effective configuration as TOML, secrets masked (``fusillade config``)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from datetime import timedelta

import attrs

from fusillade.config._model import ApiKey, Key, Settings, format_duration
from fusillade.redact import mask_urls

_SECRET_NAMES = (
    "api_key_env",
    "metrics_key_env",
    "secret_env",
)  # keys whose value names a secret's variable


def render(settings: Settings, *, env: Mapping[str, str] = os.environ) -> str:
    """The effective configuration as TOML that ``load_settings`` reads back.

    Secrets are masked: api keys show the variable's name and ``# set`` or ``# NOT SET``,
    never its value; every URL loses its credentials (``fusillade.redact``: the password
    of ``database_url``, the userinfo of an upstream's ``base_url``). A ``# from ...``
    comment names the source of each value that is not a default.
    """
    out = ["# fusillade: effective configuration (secrets masked)"]

    def note(path: Key, *extra: str) -> str:
        source = settings.sources.get(path)
        notes = [*extra, f"from {source}"] if source else list(extra)
        return f"  # {'; '.join(notes)}" if notes else ""

    def is_set(name: str) -> str:
        return "set" if env.get(name) else "NOT SET"

    def emit(prefix: Key, record: attrs.AttrsInstance) -> None:
        for key, value in attrs.asdict(record, recurse=False).items():
            path = (*prefix, key)
            if attrs.has(type(value)) or isinstance(value, Mapping):
                continue  # a table: below
            if value is None:
                out.append(f"# {key}: not set{note(path)}")
            elif key == "api_keys":
                out.append(f"{key} = [{note(path)}")
                for k in value:
                    assert isinstance(k, ApiKey)
                    line = f"{{ key_env = {toml_str(k.key_env)}, owner = {toml_str(k.owner)} }}"
                    out.append(f"  {line},  # {is_set(k.key_env)}")
                out.append("]")
            else:
                extra = [is_set(value)] if key in _SECRET_NAMES else []
                out.append(f"{key} = {_value(value)}{note(path, *extra)}")

    emit((), settings)
    for section in ("server", "daemon", "log", "retention"):
        out.append(f"\n[{section}]")
        emit((section,), getattr(settings, section))
    for section in ("upstreams", "models", "owners", "webhooks"):
        table: Mapping[str, attrs.AttrsInstance] = getattr(settings, section)
        for name, entry in table.items():
            out.append(f"\n[{section}.{toml_key(name)}]")
            emit((section, name), entry)
    return "\n".join(out) + "\n"


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, timedelta):
        return toml_str(format_duration(value))
    if isinstance(value, tuple):
        return "[" + ", ".join(toml_str(mask_urls(str(v))) for v in value) + "]"
    return toml_str(mask_urls(str(value)))


def toml_str(text: str) -> str:
    # JSON string escapes are valid TOML basic-string escapes; TOML also bans raw DEL.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def toml_key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else toml_str(name)


def show_key(path: Key) -> str:
    if len(path) == 1:
        return path[0]
    return f"[{'.'.join(map(toml_key, path[:-1]))}] {path[-1]}"
