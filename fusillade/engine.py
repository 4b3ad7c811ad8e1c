"""The embeddable API: ``async with fusillade.open(url, config) as engine: ...``.

The engine runs the daemon inside the caller's task tree (trio by default, asyncio
through anyio) and offers files, batches and results as async methods. Blocking
repository calls run in worker threads.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import IO, Any, TypeVar, cast
from uuid import UUID

import anyio
import anyio.to_thread

from fusillade.core.jsonl import JsonlLimits, Readable, iter_validated
from fusillade.core.models import BatchView, FileRecord, RequestTemplate
from fusillade.core.results import ResultLine
from fusillade.core.windows import parse_completion_window
from fusillade.runtime.clock import Clock
from fusillade.runtime.config import DaemonConfig
from fusillade.runtime.daemon import Daemon
from fusillade.store.interface import BatchSpec, Page, Repository

T = TypeVar("T")
DEFAULT_OWNER = "default"
_RESULTS_PER_HOP = 1000


# How often the engine re-reads the database's clock (the daemon does at every heartbeat).
_CLOCK_SYNC_INTERVAL = 30.0


def _host_now() -> datetime:
    return datetime.now(UTC)


class Engine:
    """Files, batches and results of one repository, with an optional daemon running.

    Every method may block (it waits for the database); none holds a connection
    while the caller consumes results.
    """

    def __init__(
        self,
        repo: Repository,
        daemon: Daemon | None,
        *,
        owner: str = DEFAULT_OWNER,
        clock: Callable[[], datetime] = _host_now,
    ):
        self.repo = repo
        self.daemon = daemon
        self.owner = owner
        # the database's clock (``open`` passes it): batch deadlines and retry times are
        # compared by daemons on other hosts
        self._now = clock

    async def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await anyio.to_thread.run_sync(lambda: fn(*args, **kwargs))

    async def create_file(
        self,
        source: Iterable[RequestTemplate] | str | os.PathLike[str] | IO[bytes],
        *,
        filename: str | None = None,
        limits: JsonlLimits | None = None,
    ) -> FileRecord:
        """Store a file of request templates.

        ``source`` is an iterable of ``RequestTemplate`` (not validated beyond the
        types), a path to an OpenAI batch JSONL file, or a binary stream of one. JSONL
        is validated line by line while it streams into the database: an invalid file
        raises ``InvalidJSONL`` (first problems, each with its line) and stores nothing.
        """
        if isinstance(source, (str, os.PathLike)):
            path = Path(source)
            name = filename or path.name
            now = self._now()  # on the event loop: the clock advances by the loop's time

            def from_path() -> FileRecord:
                with path.open("rb") as stream:
                    return self.repo.create_file(
                        self.owner,
                        name,
                        iter_validated(stream, limits),
                        now=now,
                        size_bytes=path.stat().st_size,
                    )

            return await anyio.to_thread.run_sync(from_path)
        templates: Iterable[RequestTemplate]
        if hasattr(source, "read"):  # a binary stream (itself iterable, so checked first)
            templates = iter_validated(cast(Readable, source), limits)
            name = filename or "upload.jsonl"
        else:
            templates = source
            name = filename or "templates.jsonl"
        return await self._call(  # type: ignore[no-any-return]
            self.repo.create_file, self.owner, name, templates, now=self._now()
        )

    async def create_batch(
        self,
        file_id: UUID,
        *,
        endpoint: str = "/v1/chat/completions",
        completion_window: str = "24h",
        metadata: dict[str, str] | None = None,
        batch_id: UUID | None = None,
    ) -> BatchView:
        """Create a batch of every template in the file (idempotent for ``batch_id``)."""
        spec = BatchSpec(
            file_id,
            endpoint,
            completion_window,
            parse_completion_window(completion_window),
            metadata,
            batch_id,
        )
        return await self._call(self.repo.create_batch, self.owner, spec, now=self._now())  # type: ignore[no-any-return]

    async def get_batch(self, batch_id: UUID) -> BatchView:
        return await self._call(self.repo.get_batch, self.owner, batch_id, now=self._now())  # type: ignore[no-any-return]

    async def list_batches(self, *, after: UUID | None = None, limit: int = 20) -> Page[BatchView]:
        return await self._call(  # type: ignore[no-any-return]
            self.repo.list_batches, self.owner, now=self._now(), after=after, limit=limit
        )

    async def cancel_batch(self, batch_id: UUID) -> BatchView:
        return await self._call(self.repo.cancel_batch, self.owner, batch_id, now=self._now())  # type: ignore[no-any-return]

    async def retry_failed(self, batch_id: UUID, *, include_cancelled: bool = False) -> BatchView:
        """Run the failed (and optionally canceled) requests of a batch again."""
        return await self._call(  # type: ignore[no-any-return]
            self.repo.retry_batch,
            self.owner,
            batch_id,
            now=self._now(),
            include_cancelled=include_cancelled,
        )

    async def iter_results(
        self, batch_id: UUID, *, errors: bool = False
    ) -> AsyncIterator[ResultLine]:
        """Output (or error) lines of a batch, streamed page by page."""
        it: Iterator[ResultLine] = self.repo.iter_results(self.owner, batch_id, errors=errors)
        # Lines cross from the worker thread in chunks: one thread hop per line capped
        # this at a few thousand lines/s.
        while chunk := await anyio.to_thread.run_sync(_take, it, _RESULTS_PER_HOP):
            for line in chunk:
                yield line

    async def watch(self, batch_id: UUID, *, interval: float = 0.5) -> AsyncIterator[BatchView]:
        """Yield the batch every ``interval`` seconds until it is terminal (inclusive)."""
        while True:
            view = await self.get_batch(batch_id)
            yield view
            if view.status.is_terminal:
                return
            await anyio.sleep(interval)

    async def wait(self, batch_id: UUID, *, interval: float = 0.5) -> BatchView:
        """Wait until the batch is terminal and return it."""
        last = None
        async for view in self.watch(batch_id, interval=interval):
            last = view
        assert last is not None
        return last


@contextlib.asynccontextmanager
async def open(
    database_url: str | None = None,
    config: DaemonConfig | None = None,
    *,
    repository: Repository | None = None,
    run_daemon: bool = True,
    migrate: bool = True,
    owner: str = DEFAULT_OWNER,
) -> AsyncIterator[Engine]:
    """Open fusillade on a database and (by default) run a daemon while the block runs.

    Give ``database_url`` (migrations are applied unless ``migrate=False``) or a
    ``repository`` (e.g. ``MemoryRepository()`` for a database-free run). On exit the
    daemon shuts down gracefully: in-flight requests are released for another daemon.
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
    repo = repository

    async def database_time() -> datetime | None:
        return await anyio.to_thread.run_sync(repo.database_time, abandon_on_cancel=True)

    try:
        daemon = Daemon(repository, config) if run_daemon else None
        clock = Clock()
        async with anyio.create_task_group() as clocks:
            await clocks.start(clock.keep_synced, database_time, _CLOCK_SYNC_INTERVAL)
            async with anyio.create_task_group() as tg:
                if daemon is not None:
                    await tg.start(daemon.run)
                try:
                    yield Engine(repository, daemon, owner=owner, clock=clock.now)
                finally:
                    if daemon is not None:
                        daemon.stop()
            clocks.cancel_scope.cancel()
    finally:
        if own_repo:
            close = getattr(repository, "close", None)
            if close is not None:
                await anyio.to_thread.run_sync(close)


def _take(it: Iterator[T], n: int) -> list[T]:
    return list(islice(it, n))
