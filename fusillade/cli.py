"""The ``fusillade`` command line (also ``python -m fusillade``).

Each subcommand is one ``Command`` in ``COMMANDS``: a name, a one-line help, a function
adding its arguments and a function running it (``args -> exit status``). Adding one is
writing those two functions and one line in ``COMMANDS``. Commands import what they
need inside ``run``, so ``--help`` and each command load only their own dependencies.

Exit statuses: 0 success, 1 a runtime error (one sentence on stderr, no traceback),
2 a usage error (argparse's message), 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import attrs

from fusillade import __version__
from fusillade.errors import FusilladeError

DATABASE_URL_ENV = "FUSILLADE_DATABASE_URL"


@attrs.frozen
class Command:
    """One subcommand: ``add_arguments(parser)`` then ``run(args) -> exit status``."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


# --- shared arguments and helpers -------------------------------------------------------


def _add_database_url(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url",
        metavar="URL",
        default=None,
        help=f"PostgreSQL URL or conninfo (default: ${DATABASE_URL_ENV}; "
        "without either, the embedded PostgreSQL in the default data directory)",
    )


@contextmanager
def _database(args: argparse.Namespace) -> Iterator[str]:
    """The database URL from the flag or the environment, else a started embedded server."""
    url = args.database_url or os.environ.get(DATABASE_URL_ENV)
    if url:
        yield url
        return
    from fusillade.embedded import default_data_dir, start_embedded

    data_dir = default_data_dir()
    print(f"using the embedded PostgreSQL in {data_dir}", file=sys.stderr)
    with start_embedded(data_dir) as server:
        yield server.url


# --- commands ---------------------------------------------------------------------------


def _migrate_arguments(parser: argparse.ArgumentParser) -> None:
    _add_database_url(parser)


def _migrate(args: argparse.Namespace) -> int:
    from fusillade.store.migrate import migrate

    with _database(args) as url:
        applied = migrate(url)
    for name in applied:
        print(f"applied {name}")
    if not applied:
        print("database is up to date")
    return 0


def _mock_upstream_arguments(parser: argparse.ArgumentParser) -> None:
    from fusillade.mock_upstream._cli import add_arguments

    add_arguments(parser)


def _mock_upstream(args: argparse.Namespace) -> int:
    from fusillade.mock_upstream._cli import run

    return run(args)


COMMANDS: tuple[Command, ...] = (
    Command("migrate", "apply pending database migrations", _migrate_arguments, _migrate),
    Command(
        "mock-upstream",
        "serve an OpenAI-compatible fake upstream (tests, benchmarks, trying fusillade out)",
        _mock_upstream_arguments,
        _mock_upstream,
    ),
)


# --- entry point ------------------------------------------------------------------------


def build_parser(commands: Sequence[Command] = COMMANDS) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fusillade",
        description="Durable batches of HTTP (LLM API) requests from PostgreSQL.",
    )
    parser.add_argument("--version", action="version", version=f"fusillade {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for command in commands:
        p = sub.add_parser(command.name, help=command.help, description=command.help)
        command.add_arguments(p)
        p.set_defaults(run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (the console script exits with it)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except FusilladeError as exc:
        print(f"fusillade {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"fusillade {args.command}: interrupted", file=sys.stderr)
        return 130
