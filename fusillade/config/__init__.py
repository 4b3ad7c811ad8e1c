"""Configuration: a TOML file, ``FUSILLADE_*`` environment variables, flags; flags win.

The shape is fixed by docs/configuration.md (every key, its default and its variable).
Secrets are never values here: api keys are named by the environment variable that holds
them (``key_env``, ``api_key_env``) and read when used.

``_settings`` holds the records, ``_schema`` how each key is checked, ``_load`` the
layers (file, environment, flags) and their merge, ``_render`` the masked TOML of
``fusillade config``, ``_flags`` the shared command-line flags.
"""

from __future__ import annotations

from fusillade.config._flags import add_arguments, settings_from_args
from fusillade.config._load import load_settings
from fusillade.config._render import render
from fusillade.config._settings import (
    CONFIG_ENV,
    FLAGS,
    ApiKey,
    DaemonSettings,
    ModelSettings,
    ServerSettings,
    Settings,
    UpstreamSettings,
)

__all__ = [
    "CONFIG_ENV",
    "FLAGS",
    "ApiKey",
    "DaemonSettings",
    "ModelSettings",
    "ServerSettings",
    "Settings",
    "UpstreamSettings",
    "add_arguments",
    "load_settings",
    "render",
    "settings_from_args",
]
