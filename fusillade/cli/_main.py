"""The ``fusillade`` command line (also ``python -m fusillade``).

Each subcommand is one ``Command`` in ``COMMANDS``: a name, a one-line help, a function
adding its arguments and a function running it (``args -> exit status``). Adding one is
writing those two functions and one line in ``COMMANDS``. Commands import what they
need inside ``run``, so ``--help`` and each command load only their own dependencies.

Exit statuses: 0 success, 1 a runtime error (one sentence on stderr, no traceback),
2 a usage error (argparse's message, or one line naming what to change), 130 interrupted
(Ctrl-C); a reader that closes stdout early (``status ID | head``) ends the command
quietly with 0.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

from fusillade._version import __version__
from fusillade.errors import FusilladeError
from fusillade.redact import mask_urls

if TYPE_CHECKING:
    from fusillade.cli.run import RunOptions
    from fusillade.config import Settings


@attrs.frozen
class Command:
    """One subcommand: ``add_arguments(parser)`` then ``run(args) -> exit status``."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it

# --- shared arguments and helpers -------------------------------------------------------


def _duration(text: str) -> timedelta:
    """A duration flag, in the configuration's form (``"30s"``, ``"5m"``, ``"250ms"``) or a
    plain number of seconds (``"30"``, ``"0.2"``)."""
    from fusillade.core.windows import parse_duration
    from fusillade.errors import ConfigError

    number = text.strip()
    if number.replace(".", "", 1).isdigit():
        number += "s"
    try:
        return parse_duration(number)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_config(parser: argparse.ArgumentParser, *, daemon: bool = False) -> None:
    from fusillade.config import add_arguments

    add_arguments(parser, server=False, daemon=daemon)


@contextmanager
def database(settings: Settings) -> Iterator[str]:
    """The configured database URL, else a started embedded server in ``data_dir``: how
    every command that opens the database finds it (``migrate``, ``run``, and
    ``submit``/``status``/``cancel``/``results``/``list``/``retry``/``watch`` without
    ``--server``)."""
    from fusillade.embedded import database_url

    say = functools.partial(print, file=sys.stderr)
    with database_url(settings.database_url, settings.data_dir, say=say) as url:
        yield url


# --- commands ---------------------------------------------------------------------------


def _migrate_arguments(parser: argparse.ArgumentParser) -> None:
    _add_config(parser)


def _migrate(args: argparse.Namespace) -> int:
    from fusillade.config import settings_from_args
    from fusillade.store.migrate import migrate

    with database(settings_from_args(args)) as url:
        applied = migrate(url)
    for name in applied:
        print(f"applied {name}")
    if not applied:
        print("database is up to date")
    return 0


def _run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=Path, help="an OpenAI batch JSONL file")
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        help="where to write the successes (JSONL); '-' for standard output, error lines "
        "included unless --errors is given (progress stays on stderr)",
    )
    parser.add_argument(
        "--errors",
        type=Path,
        default=None,
        help="where to write failed/cancelled lines (default: OUTPUT with .errors.jsonl; "
        "with -o -, standard output); '-' for standard output",
    )
    parser.add_argument(
        "--single-file", action="store_true", help="write error lines to OUTPUT as well"
    )
    parser.add_argument(
        "--ordered",
        action="store_true",
        help="write results in input order (the line order of INPUT), as vllm run-batch "
        "does; default: completion order",
    )
    parser.add_argument(
        "--endpoint", help="the batch endpoint (default: the url of the first line)"
    )
    parser.add_argument("--completion-window", default="24h", help="deadline (default 24h)")
    parser.add_argument(
        "--max-attempts",
        type=int,
        metavar="N",
        help="attempts per request (default: [daemon] max_attempts, 6)",
    )
    parser.add_argument(
        "--stale-after",
        type=_duration,
        metavar="DURATION",
        help="reclaim requests of a daemon silent this long, e.g. 30s, 2m, or seconds "
        "(default: [daemon] stale_after, 30s)",
    )
    parser.add_argument(
        "--progress-interval",
        type=_duration,
        default=timedelta(seconds=5),
        metavar="DURATION",
        help="time between progress lines when not on a terminal, e.g. 5s, 1m, or seconds "
        "(default 5s)",
    )
    again = parser.add_mutually_exclusive_group()
    again.add_argument(
        "--retry-failed",
        action="store_true",
        help="the batch of this input and output finished: run its failed (and cancelled) "
        "lines again, with this run's routing, keys and limits",
    )
    again.add_argument(
        "--fresh",
        action="store_true",
        help="start a new batch even if this input and output have one (the state file "
        "OUTPUT.fusillade-run.json, with -o - INPUT.stdout.fusillade-run.json, is replaced)",
    )
    parser.add_argument(
        "--no-preflight",
        action="store_true",
        help="do not check first that each upstream answers and accepts the key",
    )
    _add_config(parser, daemon=True)


def _run_settings(args: argparse.Namespace) -> Settings:
    """The configuration with ``run``'s own flags applied over it."""
    from fusillade.config import settings_from_args

    flags: dict[str, object] = {"daemon.max_attempts": args.max_attempts}
    if args.stale_after is not None:
        # a short stale threshold (tests, impatient resumes) needs beats well within it
        stale: timedelta = args.stale_after
        flags |= {"daemon.stale_after": stale}
        flags |= {"daemon.heartbeat_interval": min(timedelta(seconds=5), stale / 4)}
    return settings_from_args(args, flags=flags)


def _run(args: argparse.Namespace) -> int:
    import trio

    from fusillade import logs
    from fusillade.cli.run import EXIT_USAGE, RunOptions, check_input, check_options, run_batch
    from fusillade.errors import ConfigError, InvalidJSONL, ValidationError
    from fusillade.server.workers import worker_count

    try:
        settings = _run_settings(args)
        options = RunOptions(
            input=args.input,
            output=args.output,
            errors=args.errors,
            single_file=args.single_file,
            endpoint=args.endpoint,
            completion_window=args.completion_window,
            progress_interval=args.progress_interval,
            fresh=args.fresh,
            retry_failed=args.retry_failed,
            ordered=args.ordered,
            daemon=settings.daemon_config(),
            workers=worker_count(settings.daemon.workers),
            log_level=settings.log.level or "warning",
            log_format=settings.log.format,
        )
        logs.configure(settings.log.level or "warning", settings.log.format)  # docs/logging.md
        check_options(options)
        checked = check_input(options)
        if not _preflight(options, checked.models, skip_upstreams=args.no_preflight):
            return EXIT_USAGE
        with database(settings) as url:
            status, _ = trio.run(run_batch, url, options, checked)
    except InvalidJSONL as exc:
        print(f"fusillade run: {args.input} is not a valid batch file:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem.message}", file=sys.stderr)
        if exc.truncated:
            print("  (more problems not shown)", file=sys.stderr)
        return EXIT_USAGE
    except (ConfigError, ValidationError) as exc:
        print(f"fusillade run: error: {mask_urls(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    return status


def _preflight(options: RunOptions, models: frozenset[str], *, skip_upstreams: bool) -> bool:
    """``run``'s checks before anything is stored (``fusillade.cli.preflight``): print a
    line per warning and problem; ``False`` when there is a problem."""
    import trio

    from fusillade.cli import preflight

    problems = preflight.routing_problems(options.daemon, models)
    for line in preflight.key_warnings(options.daemon, models):
        print(f"fusillade run: {line}", file=sys.stderr)
    if not problems and not skip_upstreams:
        problems = trio.run(preflight.reachability_problems, options.daemon, models)
    for line in problems:
        print(f"fusillade run: error: {mask_urls(line)}", file=sys.stderr)
    return not problems


def _config(args: argparse.Namespace) -> int:
    from fusillade.config import render, settings_from_args

    print(render(settings_from_args(args)), end="")
    return 0


def _args(module: str, name: str) -> Callable[[argparse.ArgumentParser], None]:
    """``module.name(parser)``, imported when called: ``--help`` and each command load
    only their own dependencies."""

    def add_arguments(parser: argparse.ArgumentParser) -> None:
        getattr(importlib.import_module(module), name)(parser)

    return add_arguments


def _run_command(module: str, name: str) -> Callable[[argparse.Namespace], int]:
    """``module.name(args)``, imported when called (as ``_args``)."""

    def run(args: argparse.Namespace) -> int:
        status: int = getattr(importlib.import_module(module), name)(args)
        return status

    return run


COMMANDS: tuple[Command, ...] = (
    Command("migrate", "apply pending database migrations", _migrate_arguments, _migrate),
    Command(
        "run",
        "run one batch JSONL file end to end (resumable), writing results to -o (- for stdout)",
        _run_arguments,
        _run,
    ),
    Command(
        "mock-upstream",
        "serve an OpenAI-compatible fake upstream (tests, benchmarks, trying fusillade out)",
        _args("fusillade.mock_upstream._cli", "add_arguments"),
        _run_command("fusillade.mock_upstream._cli", "run"),
    ),
    Command(
        "config",
        "print the effective configuration, secrets masked",
        _args("fusillade.config", "add_arguments"),
        _config,
    ),
    Command(
        "serve",
        "run the HTTP API and a daemon",
        _args("fusillade.cli.serve", "add_arguments"),
        _run_command("fusillade.cli.serve", "run"),
    ),
    Command(
        "purge",
        "remove expired files, deleted files' content, and finished batches' requests and "
        "stopped daemons older than --older-than (--dry-run: only count)",
        _args("fusillade.cli.purge", "add_arguments"),
        _run_command("fusillade.cli.purge", "run"),
    ),
    Command(
        "submit",
        "upload a JSONL file and create a batch",
        _args("fusillade.cli.remote", "add_submit_arguments"),
        _run_command("fusillade.cli.remote", "submit"),
    ),
    Command(
        "status",
        "show a batch",
        _args("fusillade.cli.remote", "add_id_arguments"),
        _run_command("fusillade.cli.remote", "status"),
    ),
    Command(
        "cancel",
        "cancel a batch",
        _args("fusillade.cli.remote", "add_id_arguments"),
        _run_command("fusillade.cli.remote", "cancel"),
    ),
    Command(
        "results",
        "download a batch's results",
        _args("fusillade.cli.remote", "add_results_arguments"),
        _run_command("fusillade.cli.remote", "results"),
    ),
    Command(
        "list",
        "list batches, newest first, with their progress",
        _args("fusillade.cli.batches", "add_list_arguments"),
        _run_command("fusillade.cli.batches", "list_batches"),
    ),
    Command(
        "retry",
        "run the failed requests of a batch again",
        _args("fusillade.cli.batches", "add_retry_arguments"),
        _run_command("fusillade.cli.batches", "retry"),
    ),
    Command(
        "watch",
        "follow a batch's progress, retries and errors until it ends (exit 1 if any request "
        "did not succeed)",
        _args("fusillade.cli.batches", "add_watch_arguments"),
        _run_command("fusillade.cli.batches", "watch"),
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
        status = run(args)
        sys.stdout.flush()  # a closed pipe is reported here, not at interpreter exit
    except BaseException as exc:  # ordinary ones end in one line; the rest re-raise
        ending = _ordinary_ending(_sole(exc))
        if ending is None:
            raise
        message, status = ending
        if message:
            print(f"fusillade {args.command}: {mask_urls(message)}", file=sys.stderr)
    return status


def _sole(exc: BaseException) -> BaseException:
    """The one exception inside nested task-group exception groups, else ``exc``."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _ordinary_ending(exc: BaseException) -> tuple[str, int] | None:
    """The line and exit status that end the command after ``exc``, or ``None`` for a bug
    (its traceback stays visible)."""
    if isinstance(exc, BrokenPipeError):
        # stdout's reader left (``status ID | head``): quiet, as other tools are. Python
        # would report the pipe again when it flushes stdout at exit; point it at devnull
        # (https://docs.python.org/3/library/signal.html#note-on-sigpipe).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return "", 0
    if isinstance(exc, FusilladeError):
        return f"error: {exc}", 1
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", EXIT_INTERRUPTED
    if isinstance(exc, OSError):
        # an ordinary failure of the system (a missing directory, a full disk, a refused
        # connection): one line
        return f"error: {_os_error(exc)}", 1
    return None


def _os_error(exc: OSError) -> str:
    """``exc`` as one sentence: ``'out/x.jsonl': No such file or directory``."""
    if exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or exc}"
    return str(exc)
