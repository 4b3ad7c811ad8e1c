"""``fusillade.open``: a composition root, the engine with its repository and daemon.

It constructs the repository (from a database URL) and the daemon; the import contracts
let only the composition roots (this, ``server/serve.py``, the commands of
``fusillade/cli``) construct a repository.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import anyio
import anyio.to_thread

from fusillade.engine._rules import Rules
from fusillade.engine._service import DEFAULT_OWNER, Engine
from fusillade.runtime.clock import Clock
from fusillade.runtime.config import DaemonConfig
from fusillade.runtime.daemon import Daemon
from fusillade.store.interface import Repository

# How often the engine re-reads the database's clock (the daemon does at every heartbeat).
_CLOCK_SYNC_INTERVAL = 30.0


@contextlib.asynccontextmanager
async def open(
    database_url: str | None = None,
    config: DaemonConfig | None = None,
    *,
    repository: Repository | None = None,
    run_daemon: bool = True,
    migrate: bool = True,
    owner: str = DEFAULT_OWNER,
    rules: Rules | None = None,
) -> AsyncIterator[Engine]:
    """Open fusillade on a database and (by default) run a daemon while the block runs.

    Give ``database_url`` (migrations are applied unless ``migrate=False``) or a
    ``repository`` (e.g. ``MemoryRepository()`` for a database-free run). On exit the
    daemon shuts down gracefully: in-flight requests are released for another daemon.
    ``rules``: what the engine accepts beyond its fixed limits (``Rules``).
    """
    own_repo = repository is None
    if repository is None:
        if database_url is None:
            raise TypeError("fusillade.open() needs a database_url or a repository")
        url = database_url

        def connect() -> Repository:
            from fusillade.store.migrate import migrate as apply
            from fusillade.store.postgres import PostgresRepository

            if migrate:
                apply(url)
            repo = PostgresRepository(url)
            repo.open()
            return repo

        repository = await anyio.to_thread.run_sync(connect)
    try:
        daemon = Daemon(repository, config) if run_daemon else None
        clock = Clock()
        engine = Engine(repository, daemon, owner=owner, clock=clock.now, rules=rules)
        async with anyio.create_task_group() as clocks:
            await clocks.start(clock.keep_synced, engine.database_time, _CLOCK_SYNC_INTERVAL)
            async with anyio.create_task_group() as tg:
                if daemon is not None:
                    await tg.start(daemon.run)
                try:
                    yield engine
                finally:
                    if daemon is not None:
                        daemon.stop()
            clocks.cancel_scope.cancel()
    finally:
        if own_repo:
            close = getattr(repository, "close", None)
            if close is not None:
                await anyio.to_thread.run_sync(close)
