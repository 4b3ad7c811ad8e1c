"""``fusillade serve``: the repository, a daemon and the HTTP API in one trio task tree.

Theory of operation
-------------------
``serve`` opens the repository (applying migrations unless told not to; starting the
embedded PostgreSQL when no database URL is configured), then starts, in one nursery,
the daemon (``Daemon.run``) and hypercorn's trio worker serving the Litestar app. When
both are up it reports a ``Running`` handle through ``task_status``: the URL actually
bound (port 0 picks a free port) and ``stop()``. ``stop()`` (or SIGINT/SIGTERM through
``serve_until_signalled``) is graceful: the daemon releases what it holds, hypercorn
finishes the requests in flight (up to its graceful timeout), then the repository closes.
Cancellation from outside runs the same clean-up, shielded where it must.
"""

from __future__ import annotations

import functools
import logging
import signal
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any, cast

import attrs
import httpx
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from fusillade.config import Settings
from fusillade.embedded import open_database_url
from fusillade.engine import Engine
from fusillade.errors import ConfigError
from fusillade.runtime.clock import Clock
from fusillade.runtime.config import DaemonConfig
from fusillade.runtime.daemon import Daemon
from fusillade.server.app import create_app
from fusillade.server.auth import check_bind, is_loopback, load_keys, load_metrics_key
from fusillade.server.context import ServerContext
from fusillade.server.workers import Workers, WorkerSpec, open_workers, share_of
from fusillade.store.interface import Repository

if TYPE_CHECKING:
    from hypercorn.typing import ASGIFramework

log = logging.getLogger("fusillade.server")
# How often the API re-reads the database's clock (the daemon does at every heartbeat).
_CLOCK_SYNC_INTERVAL = 30.0
GRACEFUL_TIMEOUT = 10.0
"""Seconds hypercorn lets requests in flight finish at shutdown."""
POOL_SIZE = 16
"""Connections of the process's pool (API calls and the daemon share it)."""


@attrs.define
class Running:
    """What ``serve`` reports once it is up."""

    url: str | None
    """``http://host:port`` actually bound, or ``None`` with ``run_api=False``."""
    daemon: Daemon | None
    repo: Repository
    database_url: str
    stop_requested: trio.Event = attrs.field(factory=trio.Event)

    def stop(self) -> None:
        """Begin a graceful shutdown; ``serve`` returns when it is complete."""
        self.stop_requested.set()


def _daemon_config(settings: Settings) -> DaemonConfig:
    return settings.daemon_config()


def _hypercorn_config(host: str, port: int) -> HypercornConfig:
    config = HypercornConfig()
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    config.bind = [f"{shown}:{port}"]
    config.graceful_timeout = GRACEFUL_TIMEOUT
    config.accesslog = None
    # hypercorn's own messages go through our logging configuration.
    config.errorlog = logging.getLogger("fusillade.server.hypercorn")
    return config


def _open_repository(url: str, *, migrate: bool) -> Repository:
    from fusillade.store.migrate import migrate as apply_migrations
    from fusillade.store.postgres import PostgresRepository

    if migrate:
        applied = apply_migrations(url)
        for name in applied:
            log.info("applied migration %s", name)
    repo = PostgresRepository(url, max_size=POOL_SIZE)
    repo.open()
    return repo


async def serve(
    settings: Settings,
    *,
    run_api: bool = True,
    run_daemon: bool = True,
    migrate: bool = True,
    repository: Repository | None = None,
    daemon_config: DaemonConfig | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    announce: Callable[[str], None] | None = None,
    workers: int = 1,
    task_status: trio.TaskStatus[Running] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the API and/or a daemon until ``Running.stop()`` or cancellation.

    Args:
        settings: the effective configuration (``load_settings``).
        run_api, run_daemon: what this process runs (``--no-api``, ``--no-daemon``).
        migrate: apply pending migrations first (``--no-migrate`` to skip).
        repository: use this repository instead of opening ``settings.database_url``
            (tests); it is not closed at the end.
        daemon_config: overrides ``settings.daemon_config()``.
        transport: the daemon's httpx transport (tests).
        announce: called with one line for the operator per notable fact (where the
            database is, where the API listens, that no keys are configured).
        workers: daemons in all (``--workers``): this process's and ``workers - 1``
            worker processes (``fusillade.server.workers``); needs the database, not a
            ``repository`` given here.

    Raises:
        ConfigError: a key variable is unset, or no keys with a non-loopback host.
        OSError: the address cannot be bound.
    """
    say = announce or (lambda line: log.info("%s", line))
    keys = load_keys(settings.server.api_keys)
    metrics_key = load_metrics_key(settings.server.metrics_key_env, keys)
    host, port = settings.server.host, settings.server.port
    if run_api:
        check_bind(host, keys)
    if not run_api and not run_daemon:
        raise ConfigError("nothing to run: both --no-api and --no-daemon were given")
    async with AsyncExitStack() as stack:
        repo = repository
        url = settings.database_url or ""
        if repo is None:
            url = await stack.enter_async_context(
                open_database_url(
                    url,
                    settings.data_dir,
                    say=lambda line: say(f"no database_url configured: {line}"),
                )
            )
            repo = await trio.to_thread.run_sync(
                functools.partial(_open_repository, url, migrate=migrate)
            )
            stack.push_async_callback(_close, repo)
        daemon = None
        if repository is not None or not run_daemon:
            workers = 1  # a repository of the caller's: nothing to share it through
        processes = Workers(workers)
        config = daemon_config if daemon_config is not None else _daemon_config(settings)
        spec = WorkerSpec(url, config, settings.log.level or "info", settings.log.format)
        if run_daemon:
            daemon = Daemon(repo, share_of(config, 0, workers), transport=transport)
        running = Running(url=None, daemon=daemon, repo=repo, database_url=url)
        # The API's times (batch deadlines, cancel and retry stamps) are compared by
        # daemons on other hosts: take them from the database's clock, like the daemon.
        clock = Clock()
        engine = Engine(repo, daemon, clock=clock.now)
        async with trio.open_nursery() as clocks:
            await clocks.start(clock.keep_synced, engine.database_time, _CLOCK_SYNC_INTERVAL)
            async with trio.open_nursery() as nursery, AsyncExitStack() as daemons:
                # The API binds first: an address in use then starts no daemon.
                if run_api:
                    ctx = ServerContext(
                        engine=engine,
                        settings=settings.server,
                        keys=keys,
                        metrics_key=metrics_key,
                        workers=processes,
                    )
                    binds: list[str] = await nursery.start(
                        functools.partial(
                            hypercorn_serve,
                            # Litestar's ASGI types are narrower than hypercorn's union
                            cast("ASGIFramework", create_app(ctx)),
                            _hypercorn_config(host, port),
                            shutdown_trigger=running.stop_requested.wait,
                        )
                    )
                    running.url = binds[0] if binds else None
                    say(f"API listening on {running.url}")
                    if not keys.enabled:
                        say(
                            "no api keys configured: every request acts for owner 'default' "
                            "(listening on loopback only)"
                        )
                    elif not metrics_key.enabled and not is_loopback(host):
                        say(
                            "GET /metrics answers without a key; set [server] metrics_key_env "
                            "to require one"
                        )
                if daemon is not None:
                    await daemons.enter_async_context(open_workers(spec, processes, say=say))
                    await nursery.start(daemon.run)
                    if workers > 1:
                        say(
                            f"{workers} daemons: this process and worker processes {processes.pids}"
                        )
                task_status.started(running)
                await running.stop_requested.wait()
                if daemon is not None:
                    daemon.stop()
            clocks.cancel_scope.cancel()


async def _close(repo: Repository) -> None:
    close = getattr(repo, "close", None)
    if close is not None:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(close)


async def serve_until_signalled(settings: Settings, **kwargs: Any) -> None:
    """``serve`` with SIGINT/SIGTERM as a graceful stop (a second signal: immediate).

    Signals are watched once the server is up; until then Ctrl-C interrupts the start-up.
    What a signal does is told through ``announce`` as the rest, else logged.
    """
    announce: Callable[[str], None] | None = kwargs.get("announce")
    say = announce or (lambda line: log.info("%s", line))
    async with trio.open_nursery() as nursery:

        async def run(task_status: trio.TaskStatus[Running]) -> None:
            await serve(settings, task_status=task_status, **kwargs)
            nursery.cancel_scope.cancel()  # done: stop watching signals

        running: Running = await nursery.start(run)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                if running.stop_requested.is_set():
                    say("second signal: stopping now")
                    nursery.cancel_scope.cancel()
                    return
                name = signal.Signals(signum).name
                say(f"{name}: shutting down gracefully")
                running.stop()
