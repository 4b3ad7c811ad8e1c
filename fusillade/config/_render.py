"""The effective configuration as TOML, secrets masked (``fusillade config``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import attrs

from fusillade.config._load import _Key, _toml_key, _toml_str
from fusillade.config._schema import _NAMED, _SCHEMA
from fusillade.config._settings import Settings
from fusillade.redact import mask_urls


def render(settings: Settings, *, env: Mapping[str, str] = os.environ) -> str:
    """The effective configuration as TOML that ``load_settings`` reads back.

    Secrets are masked: api keys show the variable's name and ``# set`` or ``# NOT SET``,
    never its value; every URL loses its credentials (``fusillade.redact``: the password
    of ``database_url``, the userinfo of an upstream's ``base_url``). A ``# from ...``
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
                named_secret = key in ("api_key_env", "metrics_key_env")
                extra = [is_set(value)] if named_secret and isinstance(value, str) else []
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
        return "[" + ", ".join(_toml_str(mask_urls(str(v))) for v in value) + "]"
    return _toml_str(mask_urls(str(value)))
