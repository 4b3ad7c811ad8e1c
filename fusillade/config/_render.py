"""The effective configuration as TOML, secrets masked (``fusillade config``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import timedelta

import attrs

from fusillade.config._load import _Key, _toml_key, _toml_str
from fusillade.config._model import ApiKey, Settings, format_duration
from fusillade.redact import mask_urls

_SECRET_NAMES = ("api_key_env", "metrics_key_env")  # keys whose value names a secret's variable


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

    def emit(prefix: _Key, record: attrs.AttrsInstance) -> None:
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
                    line = f"{{ key_env = {_toml_str(k.key_env)}, owner = {_toml_str(k.owner)} }}"
                    out.append(f"  {line},  # {is_set(k.key_env)}")
                out.append("]")
            else:
                extra = [is_set(value)] if key in _SECRET_NAMES else []
                out.append(f"{key} = {_value(value)}{note(path, *extra)}")

    emit((), settings)
    for section in ("server", "daemon"):
        out.append(f"\n[{section}]")
        emit((section,), getattr(settings, section))
    for section in ("upstreams", "models"):
        table: Mapping[str, attrs.AttrsInstance] = getattr(settings, section)
        for name, entry in table.items():
            out.append(f"\n[{section}.{_toml_key(name)}]")
            emit((section, name), entry)
    return "\n".join(out) + "\n"


def _value(value: object) -> str:
    if isinstance(value, int):
        return str(value)
    if isinstance(value, timedelta):
        return _toml_str(format_duration(value))
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_str(mask_urls(str(v))) for v in value) + "]"
    return _toml_str(mask_urls(str(value)))
