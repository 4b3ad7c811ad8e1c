"""``fusillade serve``: its flags and how it runs (``fusillade.cli`` delegates here)."""

from __future__ import annotations

import argparse
import errno
import functools
import os
import sys

from fusillade import logs
from fusillade.config import add_arguments as add_config_arguments
from fusillade.config import settings_from_args
from fusillade.errors import ConfigError, FusilladeError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument(
        "--no-daemon", action="store_true", help="serve the API only (another process runs)"
    )
    parser.add_argument("--no-api", action="store_true", help="run a daemon only (no HTTP server)")
    parser.add_argument(
        "--no-migrate", action="store_true", help="do not apply pending migrations at start"
    )


def _say(line: str) -> None:
    print(f"fusillade serve: {line}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    import trio

    from fusillade.server.serve import serve_until_signalled
    from fusillade.server.workers import worker_count

    settings = settings_from_args(args, os.environ)
    logs.configure(settings.log.level or "info", settings.log.format)
    try:
        trio.run(
            functools.partial(
                serve_until_signalled,
                settings,
                run_api=not args.no_api,
                run_daemon=not args.no_daemon,
                migrate=not args.no_migrate,
                # JSON lines only, for log shippers: the announcements become log lines
                announce=_say if settings.log.format == "text" else None,
                workers=worker_count(settings.daemon.workers) if not args.no_daemon else 1,
            )
        )
    except BaseExceptionGroup as group:
        leaf = _single_leaf(group)
        if not isinstance(leaf, FusilladeError | OSError):
            raise
        error: BaseException = leaf
    except (FusilladeError, OSError) as exc:
        error = exc
    else:
        return 0
    if isinstance(error, OSError):
        server = settings.server
        if error.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES):
            error = ConfigError(f"cannot listen on {server.host}:{server.port}: {error.strerror}")
        else:
            error = FusilladeError(str(error))
    raise error from None


def _single_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one error inside nested task-group wrappers, or ``None`` when there are several."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    return leaves[0] if len(leaves) == 1 else None
