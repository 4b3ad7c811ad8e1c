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
from pathlib import Path

import attrs

from fusillade import __version__
from fusillade.errors import FusilladeError
from fusillade.redact import mask_urls

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


def _run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=Path, help="an OpenAI batch JSONL file")
    parser.add_argument(
        "-o", "--output", type=Path, required=True, help="where to write the successes (JSONL)"
    )
    parser.add_argument(
        "--errors",
        type=Path,
        default=None,
        help="where to write failed/cancelled lines (default: OUTPUT with .errors.jsonl)",
    )
    parser.add_argument(
        "--single-file", action="store_true", help="write error lines to OUTPUT as well"
    )
    parser.add_argument(
        "--upstream",
        metavar="URL",
        help="send every model to this OpenAI-compatible server (e.g. http://127.0.0.1:8001)",
    )
    parser.add_argument(
        "--api-key-env",
        metavar="NAME",
        default="OPENAI_API_KEY",
        help="environment variable holding the upstream api key (default: OPENAI_API_KEY)",
    )
    parser.add_argument(
        "--concurrency", type=int, default=16, help="requests in flight per model (default 16)"
    )
    parser.add_argument(
        "--endpoint", help="the batch endpoint (default: the url of the first line)"
    )
    parser.add_argument("--completion-window", default="24h", help="deadline (default 24h)")
    parser.add_argument(
        "--max-attempts", type=int, default=6, help="attempts per request (default 6)"
    )
    parser.add_argument(
        "--stale-after",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="reclaim requests of a daemon silent this long (default 30)",
    )
    parser.add_argument(
        "--progress-interval",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="seconds between progress lines when not on a terminal (default 5)",
    )
    _add_database_url(parser)


def _run(args: argparse.Namespace) -> int:
    import trio

    from fusillade.cli.run import EXIT_USAGE, RunOptions, check_options, run_batch
    from fusillade.errors import InvalidJSONL, ValidationError

    options = RunOptions(
        input=args.input,
        output=args.output,
        errors=args.errors,
        single_file=args.single_file,
        upstream=args.upstream,
        api_key_env=args.api_key_env,
        concurrency=args.concurrency,
        endpoint=args.endpoint,
        completion_window=args.completion_window,
        max_attempts=args.max_attempts,
        stale_after=args.stale_after,
        progress_interval=args.progress_interval,
    )
    try:
        check_options(options)
        with _database(args) as url:
            status, _ = trio.run(run_batch, url, options)
    except InvalidJSONL as exc:
        print(f"fusillade run: {options.input} is not a valid batch file:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem.message}", file=sys.stderr)
        if exc.truncated:
            print("  (more problems not shown)", file=sys.stderr)
        return EXIT_USAGE
    except ValidationError as exc:
        print(f"fusillade run: error: {mask_urls(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    return status


def _config_arguments(parser: argparse.ArgumentParser) -> None:
    from fusillade.config import add_arguments

    add_arguments(parser)


def _config(args: argparse.Namespace) -> int:
    from fusillade.config import render, settings_from_args

    print(render(settings_from_args(args)), end="")
    return 0


def _serve_arguments(parser: argparse.ArgumentParser) -> None:
    from fusillade.cli.serve import add_arguments

    add_arguments(parser)


def _serve(args: argparse.Namespace) -> int:
    from fusillade.cli.serve import run

    return run(args)


def _remote(name: str) -> Callable[[argparse.Namespace], int]:
    """``submit``/``status``/``cancel``/``results``, loaded when run."""

    def run(args: argparse.Namespace) -> int:
        from fusillade.cli import remote

        command: Callable[[argparse.Namespace], int] = getattr(remote, name)
        return command(args)

    return run


def _remote_arguments(name: str) -> Callable[[argparse.ArgumentParser], None]:
    def add(parser: argparse.ArgumentParser) -> None:
        from fusillade.cli import remote

        adder: Callable[[argparse.ArgumentParser], None] = getattr(remote, f"add_{name}_arguments")
        adder(parser)

    return add


COMMANDS: tuple[Command, ...] = (
    Command("migrate", "apply pending database migrations", _migrate_arguments, _migrate),
    Command(
        "run",
        "run one batch JSONL file end to end (resumable), writing results to -o",
        _run_arguments,
        _run,
    ),
    Command(
        "mock-upstream",
        "serve an OpenAI-compatible fake upstream (tests, benchmarks, trying fusillade out)",
        _mock_upstream_arguments,
        _mock_upstream,
    ),
    Command(
        "config", "print the effective configuration, secrets masked", _config_arguments, _config
    ),
    Command("serve", "run the HTTP API and a daemon", _serve_arguments, _serve),
    Command(
        "submit",
        "upload a JSONL file and create a batch",
        _remote_arguments("submit"),
        _remote("submit"),
    ),
    Command("status", "show a batch", _remote_arguments("id"), _remote("status")),
    Command("cancel", "cancel a batch", _remote_arguments("id"), _remote("cancel")),
    Command(
        "results", "download a batch's results", _remote_arguments("results"), _remote("results")
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
        print(f"fusillade {args.command}: error: {mask_urls(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"fusillade {args.command}: interrupted", file=sys.stderr)
        return 130
