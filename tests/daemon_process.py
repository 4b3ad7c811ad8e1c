"""A daemon in a process of its own, for crash and replica tests.

``python tests/daemon_process.py DATABASE_URL UPSTREAM_URL CONCURRENCY STALE_AFTER [WEBHOOK]``
prints ``ready`` once the daemon runs, and stops gracefully on SIGTERM. ``WEBHOOK``: a URL
for owner ``alice``'s batch events, signed with the secret in ``TEST_WHSEC``.
"""

from __future__ import annotations

import signal
import sys
from datetime import timedelta

import trio

from fusillade.core.retry import RetryPolicy
from fusillade.runtime.config import DaemonConfig, Upstream, Webhook
from fusillade.runtime.daemon import Daemon
from fusillade.store.postgres import PostgresRepository


async def main(
    database_url: str, upstream: str, concurrency: int, stale_after: float, webhook: str
) -> None:
    repo = PostgresRepository(database_url)
    repo.open()
    config = DaemonConfig(
        # slow start off: the tests hold requests and count them in flight before any answer
        upstreams={"mock": Upstream(upstream, slow_start=False)},
        default_upstream="mock",
        default_concurrency=concurrency,
        stale_after=stale_after,
        heartbeat_interval=stale_after / 4,
        maintenance_interval=stale_after / 4,
        poll_interval=0.2,
        shutdown_grace=0.5,
        retry=RetryPolicy(base=timedelta(milliseconds=50), cap=timedelta(milliseconds=200)),
        webhooks={"alice": Webhook(webhook, "TEST_WHSEC")} if webhook else {},
        webhook_allow_private=True,
        webhook_timeout=5,
    )
    daemon = Daemon(repo, config)
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(daemon.run)
            print("ready", flush=True)
            async for _ in signals:
                daemon.stop()
                break
    repo.close()


if __name__ == "__main__":
    url, upstream, concurrency, stale = sys.argv[1:5]
    webhook = sys.argv[5] if len(sys.argv) > 5 else ""
    trio.run(main, url, upstream, int(concurrency), float(stale), webhook)
