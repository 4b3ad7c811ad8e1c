"""``fusillade mock-upstream``: the flags (from ``OPTIONS``) and the command.

``add_arguments`` imports no trio (``fusillade --help`` stays light); ``run`` does.
"""

from __future__ import annotations

import argparse
import functools
import signal
from typing import Any

from fusillade.errors import ConfigError
from fusillade.mock_upstream._behaviour import OPTIONS, Behaviour, MockConfig

DEFAULT_PORT = 8001


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: any free)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random faults")
    for option in OPTIONS:
        # SUPPRESS: only the flags given reach the namespace; Behaviour supplies the defaults.
        common: dict[str, Any] = {"dest": option.name, "default": argparse.SUPPRESS}
        if option.kind == "bool":
            parser.add_argument(option.flag, action="store_true", help=option.help, **common)
        elif option.name == "slow_body":
            parser.add_argument(
                option.flag, nargs="?", const=1.0, type=option.parse, metavar=option.metavar,
                help=option.help, **common,
            )  # fmt: skip
        else:
            parser.add_argument(
                option.flag, type=option.parse, metavar=option.metavar, help=option.help, **common
            )


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted (exit 130) or sent SIGTERM (exit 0)."""
    import trio

    given = {option.name: getattr(args, option.name) for option in OPTIONS if option.name in args}
    try:
        config = MockConfig(default=Behaviour(**given), seed=args.seed)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    trio.run(_main, config, args.host, args.port)
    return 0


async def _main(config: MockConfig, host: str, port: int) -> None:
    import trio

    from fusillade.mock_upstream._server import serve_mock_upstream

    failed: OSError | None = None
    async with trio.open_nursery() as nursery:
        try:
            server = await nursery.start(
                functools.partial(serve_mock_upstream, config, host=host, port=port)
            )
        except OSError as exc:
            failed = exc
        else:
            print(f"mock-upstream listening on {server.url}", flush=True)
            with trio.open_signal_receiver(signal.SIGTERM) as signals:
                async for _ in signals:
                    break
            nursery.cancel_scope.cancel()
    if failed is not None:
        raise ConfigError(f"cannot listen on {host}:{port}: {failed.strerror or failed}")
