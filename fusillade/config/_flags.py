"""The command-line flags shared by ``config``, ``serve`` and the other commands."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path

from fusillade.config._load import load_settings
from fusillade.config._settings import CONFIG_ENV, Settings


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
