"""A daemon in a process of its own, for the crash, replica and shutdown scenarios.

``python tests/reliability/daemon_main.py DATABASE_URL UPSTREAM_URL --daemon-id ID [...]``
prints ``ready`` once the daemon runs (registered, claiming) and stops gracefully on
SIGTERM (exit status 0). Every timing the scenarios measure is a flag, so each test says
the thresholds it asserts against.
"""

from __future__ import annotations

import argparse
import signal
from datetime import timedelta
from uuid import UUID

import trio

from fusillade.core.retry import RetryPolicy
from fusillade.runtime.config import DaemonConfig, Upstream
from fusillade.runtime.daemon import Daemon
from fusillade.store.postgres import PostgresRepository


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("database_url")
    p.add_argument("upstream")
    p.add_argument("--daemon-id", type=UUID, required=True)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--stale-after", type=float, default=2.0)
    p.add_argument("--heartbeat-interval", type=float, default=0.25)
    p.add_argument("--maintenance-interval", type=float, default=0.25)
    p.add_argument("--shutdown-grace", type=float, default=0.5)
    p.add_argument("--request-timeout", type=float, default=30.0)
    return p.parse_args(argv)


async def main(args: argparse.Namespace) -> None:
    repo = PostgresRepository(args.database_url, max_size=8)
    repo.open()
    config = DaemonConfig(
        # slow start off: the tests hold requests and count them in flight before any answer
        upstreams={"mock": Upstream(args.upstream, slow_start=False)},
        default_upstream="mock",
        default_concurrency=args.concurrency,
        stale_after=args.stale_after,
        heartbeat_interval=args.heartbeat_interval,
        maintenance_interval=args.maintenance_interval,
        poll_interval=0.2,
        cancel_check_interval=0.1,
        shutdown_grace=args.shutdown_grace,
        request_timeout=args.request_timeout,
        retry=RetryPolicy(base=timedelta(milliseconds=50), cap=timedelta(milliseconds=200)),
    )
    daemon = Daemon(repo, config, daemon_id=args.daemon_id)
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(daemon.run)
            print("ready", flush=True)
            async for _ in signals:
                daemon.stop()
                break
    repo.close()


if __name__ == "__main__":
    trio.run(main, parse())
