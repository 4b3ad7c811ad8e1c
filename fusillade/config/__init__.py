"""Configuration: a TOML file, ``FUSILLADE_*`` environment variables, flags; flags win.

The shape is fixed by docs/configuration.md (every key, its default and its variable).
Secrets are never values here: api keys are named by the environment variable that holds
them (``key_env``, ``api_key_env``) and read when used.

``_model`` is the typed model (attrs records; each key's type carries its check),
``_load`` merges the sources and structures them with cattrs, and holds the shared
command-line flags; ``_render`` writes the masked TOML of ``fusillade config``.
"""

from __future__ import annotations

from fusillade.config._load import add_arguments, load_settings, settings_from_args
from fusillade.config._model import (
    CONFIG_ENV,
    FLAGS,
    ApiKey,
    DaemonSettings,
    LogSettings,
    ModelSettings,
    OwnerSettings,
    RetentionSettings,
    ServerSettings,
    Settings,
    UpstreamSettings,
    WebhookSettings,
)
from fusillade.config._render import render

__all__ = [
    "CONFIG_ENV",
    "FLAGS",
    "ApiKey",
    "DaemonSettings",
    "LogSettings",
    "ModelSettings",
    "OwnerSettings",
    "RetentionSettings",
    "ServerSettings",
    "Settings",
    "UpstreamSettings",
    "WebhookSettings",
    "add_arguments",
    "load_settings",
    "render",
    "settings_from_args",
]
