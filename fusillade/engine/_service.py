"""``Engine``: files, batches and results of one repository, for one owner.

The application service: every adapter (the HTTP routes, the command line on the
database, ``run``, library callers) calls these methods, so the rules (``_rules.py``),
the rendering of a file's content (``_content.py``) and paging are written once. Blocking
repository calls go through one typed thread hop, ``AsyncRepository.call``.
"""

from __future__ import annotations

import copy
import functools
import os
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Iterable,
    Iterator,
    Mapping,
)
from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path
from typing import IO, Final, TypeVar, cast
from uuid import UUID

import anyio
import anyio.to_thread
import attrs

from fusillade.core.idempotency import IdempotencyKey, batch_fingerprint, check_key
from fusillade.core.jsonl import JsonlLimits, Readable, iter_validated
from fusillade.core.live import LivePage, ResultCursor
from fusillade.core.models import (
    BatchView,
    FilePurpose,
    FileRecord,
    RequestState,
    RequestTemplate,
)
from fusillade.core.results import ResultLine, format_input_line, format_result_line
from fusillade.core.trouble import BatchTrouble, ErrorKinds
from fusillade.engine._content import Content, chunk_reader
from fusillade.engine._follow import Follow
from fusillade.engine._rules import Rules, batch_spec, cursor_uuid, public_uuid
from fusillade.errors import NotFound, ValidationError
from fusillade.runtime.daemon import Daemon
from fusillade.runtime.repo import AsyncRepository
from fusillade.store.interface import Page, Repository, RequestSummary, StatusSnapshot

T = TypeVar("T")
DEFAULT_OWNER: Final = "default"
THREADS: Final = 40
"""Worker threads one engine's repository calls may occupy at once (anyio's default)."""
_RESULTS_PER_HOP: Final = 1000
LIVE_PAGE: Final = 1000
"""Lines one read of a running batch's output returns at most (``Engine.read_live``)."""
STATUS_WINDOW: Final = timedelta(minutes=1)
"""How far back ``Engine.status`` counts finished requests (the status page's throughput)."""


def _host_now() -> datetime:
    return datetime.now(UTC)


class Engine:
    """Files, batches and results of one repository, as one owner, with an optional daemon.

    Every method may block (it waits for the database); none holds a connection
    while the caller consumes results. Ids are uuids, or the public ids clients see
    (``file-...``, ``batch_...``): a malformed public id is not found.

    Args:
        repo: the repository.
        daemon: the daemon running in this process, if any (``open`` starts one).
        owner: whose files and batches these are (``for_owner`` for another).
        clock: now; ``open`` passes the database's clock, since batch deadlines and
            retry times are compared by daemons on other hosts.
        rules: what ``create_file`` and ``create_batch`` accept beyond the limits every
            engine applies (``Rules``: by default any endpoint and window).
    """

    def __init__(
        self,
        repo: Repository,
        daemon: Daemon | None = None,
        *,
        owner: str = DEFAULT_OWNER,
        clock: Callable[[], datetime] = _host_now,
        rules: Rules | None = None,
    ) -> None:
        self.repo = repo
        self.daemon = daemon
        self.owner = owner
        self.rules = rules if rules is not None else Rules()
        self._now = clock
        self._threads = AsyncRepository(repo, threads=THREADS)

    def for_owner(self, owner: str) -> Engine:
        """This engine acting for ``owner`` (the same repository, threads and rules)."""
        other = copy.copy(self)
        other.owner = owner
        return other

    def with_rules(self, rules: Rules) -> Engine:
        """This engine applying ``rules``."""
        other = copy.copy(self)
        other.rules = rules
        return other

    # -------------------------------------------------------------------------- files

    async def create_file(
        self,
        source: Iterable[RequestTemplate] | str | os.PathLike[str] | IO[bytes],
        *,
        filename: str | None = None,
        limits: JsonlLimits | None = None,
        size_bytes: int | None = None,
        idempotency: IdempotencyKey | None = None,
        expires_after: timedelta | None = None,
    ) -> FileRecord:
        """Store a file of request templates.

        ``source`` is an iterable of ``RequestTemplate`` (not validated beyond the
        types; ``size_bytes`` is then its size as uploaded, if known), a path to an
        OpenAI batch JSONL file, or a binary stream of one. JSONL is validated line by
        line (``limits``, else the engine's ``rules.limits``) while it streams into the
        database: an invalid file raises ``InvalidJSONL`` (first problems, each with its
        line) and stores nothing.

        ``idempotency``: a client's key and the upload's fingerprint
        (``fusillade.core.idempotency.file_fingerprint``); while the key is remembered,
        the same request answers with the file it created (as it is now), stored once.

        ``expires_after``: the file expires (answers 404, its content is purged) this
        long after its creation (OpenAI's ``expires_after``); ``None``: never.

        Raises:
            ValidationError: the key is empty or too long.
            Conflict: the key was used for a different request.
        """
        if idempotency is not None:
            check_key(idempotency.key)
        limits = limits if limits is not None else self.rules.limits
        now = self._now()  # on the event loop: the clock advances by the loop's time
        expires_at = None if expires_after is None else now + expires_after
        if isinstance(source, (str, os.PathLike)):
            path = Path(source)
            name = filename or path.name

            def from_path() -> FileRecord:
                with path.open("rb") as stream:
                    return self.repo.create_file(
                        self.owner,
                        name,
                        iter_validated(stream, limits),
                        now=now,
                        size_bytes=path.stat().st_size,
                        idempotency=idempotency,
                        expires_at=expires_at,
                    )

            return await self._threads.call(from_path)
        templates: Iterable[RequestTemplate]
        if hasattr(source, "read"):  # a binary stream (itself iterable, so checked first)
            templates = iter_validated(cast(Readable, source), limits)
            name = filename or "upload.jsonl"
        else:
            templates = source
            name = filename or "templates.jsonl"
        return await self._threads.call(
            self.repo.create_file,
            self.owner,
            name,
            templates,
            now=now,
            size_bytes=size_bytes,
            idempotency=idempotency,
            expires_at=expires_at,
        )

    async def get_file(self, file_id: UUID | str) -> FileRecord:
        return await self._threads.call(
            self.repo.get_file, self.owner, public_uuid("file", file_id)
        )

    async def list_files(
        self,
        *,
        after: UUID | str | None = None,
        limit: int = 20,
        purposes: Collection[FilePurpose] | None = None,
        ascending: bool = False,
    ) -> Page[FileRecord]:
        """Newest first (``ascending``: oldest first), after the cursor ``after``.

        Raises:
            ValidationError: ``after`` is not a file id.
        """
        return await self._threads.call(
            self.repo.list_files,
            self.owner,
            after=cursor_uuid("file", after),
            limit=limit,
            purposes=purposes,
            ascending=ascending,
        )

    async def delete_file(self, file_id: UUID | str) -> None:
        uuid = public_uuid("file", file_id)
        await self._threads.call(self.repo.delete_file, self.owner, uuid, now=self._now())

    async def file_content(self, file_id: UUID | str) -> Content:
        """The content of a file, as a download sends it (``Content``: ``bytes`` chunks).

        An input file gives its stored lines; an output or error file the results of its
        batch so far (partial while the batch runs: ``content.incomplete``). The first
        chunk is read here, so a failure raises now rather than mid-iteration.
        """
        uuid = public_uuid("file", file_id)
        record = await self._threads.call(self.repo.get_file, self.owner, uuid, sized=False)
        read: Callable[[], bytes | None]
        incomplete = False
        if record.purpose is FilePurpose.BATCH:
            read = chunk_reader(self.repo.iter_templates(self.owner, record.id), format_input_line)
        else:
            if record.batch_id is None:  # pragma: no cover - the schema forbids it
                raise NotFound("file", uuid)
            # The status before the lines: terminal then, the lines read after are all.
            view = await self.get_batch(record.batch_id)
            incomplete = not view.status.is_terminal
            errors = record.purpose is FilePurpose.BATCH_ERROR
            results = self.repo.iter_results(self.owner, record.batch_id, errors=errors)
            read = chunk_reader(results, format_result_line)
        first = await self._threads.call(read)
        return Content(
            record, first, functools.partial(self._threads.call, read), incomplete=incomplete
        )

    # ------------------------------------------------------------------------ batches

    async def create_batch(
        self,
        file_id: UUID | str,
        *,
        endpoint: str = "/v1/chat/completions",
        completion_window: str = "24h",
        metadata: Mapping[str, str] | None = None,
        batch_id: UUID | None = None,
        idempotency_key: str | None = None,
        output_expires_after: timedelta | None = None,
    ) -> BatchView:
        """Create a batch of every template in the file (idempotent for ``batch_id``).

        ``output_expires_after``: the output and error files expire this long after the
        batch's creation (OpenAI's ``output_expires_after``); the batch's requests are
        purged once it has finished and they have expired. ``None``: kept by the
        retention rule.

        ``idempotency_key``: a client's key; while it is remembered
        (``IDEMPOTENCY_TTL``), the same request (file, endpoint, window, metadata,
        output expiry) answers with the batch it created, as it is now, and creates nothing.

        Raises:
            ValidationError: the endpoint or window is not accepted (``rules``), the
                metadata breaks OpenAI's limits, or the file cannot make a batch (not
                an input file, empty, a line for another endpoint).
            NotFound: no such file of this owner.
            Conflict: ``batch_id`` is another owner's batch; the key was used for a
                different request.
        """
        spec = batch_spec(
            self.rules,
            file_id,
            endpoint=endpoint,
            completion_window=completion_window,
            metadata=metadata,
            batch_id=batch_id,
        )
        if idempotency_key is not None:
            fingerprint = batch_fingerprint(
                spec.input_file_id,
                spec.endpoint,
                spec.completion_window,
                spec.metadata,
                output_expires_after,
            )
            key = IdempotencyKey(check_key(idempotency_key), fingerprint)
            spec = attrs.evolve(spec, idempotency=key)
        if output_expires_after is not None:
            spec = attrs.evolve(spec, output_expires_after=output_expires_after)
        return await self._threads.call(self.repo.create_batch, self.owner, spec, now=self._now())

    async def get_batch(self, batch_id: UUID | str) -> BatchView:
        uuid = public_uuid("batch", batch_id)
        return await self._threads.call(self.repo.get_batch, self.owner, uuid, now=self._now())

    async def list_batches(
        self, *, after: UUID | str | None = None, limit: int = 20
    ) -> Page[BatchView]:
        """Newest first, after the cursor ``after``.

        Raises:
            ValidationError: ``after`` is not a batch id.
        """
        cursor = cursor_uuid("batch", after)
        return await self._threads.call(
            self.repo.list_batches, self.owner, now=self._now(), after=cursor, limit=limit
        )

    async def cancel_batch(self, batch_id: UUID | str) -> BatchView:
        uuid = public_uuid("batch", batch_id)
        return await self._threads.call(self.repo.cancel_batch, self.owner, uuid, now=self._now())

    async def retry_failed(
        self, batch_id: UUID | str, *, include_cancelled: bool = False
    ) -> BatchView:
        """Run the failed (and optionally canceled) requests of a batch again."""
        return await self._threads.call(
            self.repo.retry_batch,
            self.owner,
            public_uuid("batch", batch_id),
            now=self._now(),
            include_cancelled=include_cancelled,
        )

    async def list_requests(
        self,
        batch_id: UUID | str,
        *,
        states: Collection[RequestState] | None = None,
        after: UUID | str | None = None,
        limit: int = 20,
    ) -> tuple[BatchView, Page[RequestSummary]]:
        """The batch and a page of its requests in input order (``states``: only those).

        Raises:
            NotFound: no such batch of this owner.
            ValidationError: ``after`` is not a request id.
        """
        uuid = public_uuid("batch", batch_id)
        cursor = cursor_uuid("request", after)
        wanted = list(states) if states else None
        now = self._now()

        def read() -> tuple[BatchView, Page[RequestSummary]]:
            view = self.repo.get_batch(self.owner, uuid, now=now)
            page = self.repo.list_requests(
                self.owner, uuid, states=wanted, after=cursor, limit=limit
            )
            return view, page

        return await self._threads.call(read)

    async def status(self, *, every_owner: bool = False) -> StatusSnapshot:
        """What the status page shows: this owner's (``every_owner``: everyone's) newest
        unfinished and finished batches, per model the requests in flight and those
        finished within ``STATUS_WINDOW``, and the latest failures."""
        now = self._now()
        return await self._threads.call(
            self.repo.status,
            None if every_owner else self.owner,
            now=now,
            since=now - STATUS_WINDOW,
        )

    # ------------------------------------------------------------------------ results

    async def iter_results(
        self, batch_id: UUID | str, *, errors: bool = False
    ) -> AsyncIterator[ResultLine]:
        """Output (or error) lines of a batch, streamed page by page."""
        uuid = public_uuid("batch", batch_id)
        it: Iterator[ResultLine] = self.repo.iter_results(self.owner, uuid, errors=errors)
        # Lines cross from the worker thread in chunks: one thread hop per line capped
        # this at a few thousand lines/s.
        while chunk := await self._threads.call(_take, it, _RESULTS_PER_HOP):
            for line in chunk:
                yield line

    async def iter_results_by_line(self, batch_id: UUID | str) -> AsyncIterator[ResultLine]:
        """Output and error lines of a batch together, in input order (the line order of
        its file), streamed page by page; ``line.state`` tells them apart (completed:
        output; failed, canceled: error). Finished requests only."""
        uuid = public_uuid("batch", batch_id)
        it = self.repo.iter_results_by_line(self.owner, uuid)
        while chunk := await self._threads.call(_take, it, _RESULTS_PER_HOP):
            for line in chunk:
                yield line

    async def read_live(
        self,
        batch_id: UUID | str,
        *,
        after: ResultCursor | str | None = None,
        limit: int = LIVE_PAGE,
    ) -> LivePage:
        """The batch's output lines not read by a follower at ``after`` (at most ``limit``
        after its position, plus any that concurrent writers committed late).

        Unlike ``iter_results`` this may be read while the batch runs and continued from
        the cursor of the last line kept: across reads every output line comes exactly
        once (docs/semantics.md). ``page.complete``: the batch is terminal and no line
        remains. ``after`` is a ``ResultCursor`` or its ``str``; a malformed one is a
        ``ValidationError`` (param ``after``).
        """
        cursor = parse_cursor(after)
        uuid = public_uuid("batch", batch_id)
        # The status first: terminal then, every result was committed before the lines
        # are read, so a read that does not fill the page has them all.
        view = await self.get_batch(uuid)
        found = await self._threads.call(
            self.repo.live_output, self.owner, uuid, after=cursor, limit=limit
        )
        return LivePage(
            lines=found.lines,
            cursor=found.cursor,
            complete=view.status.is_terminal and len(found.lines) < limit,
            status=view.status,
        )

    def follow(
        self,
        batch_id: UUID | str,
        *,
        after: ResultCursor | str | None = None,
        interval: float = 0.5,
    ) -> Follow:
        """The batch's output lines as they are recorded (``LiveLine``: each with the
        cursor to resume after it), until it is terminal and every line was given:
        ``async for live in engine.follow(batch_id): ...``.

        Reads every ``interval`` seconds while nothing is new. A follower that stops
        and resumes ``after`` the cursor of the last line it kept misses no line and gets
        none twice. A malformed ``after`` raises ``ValidationError`` here.
        """
        cursor = parse_cursor(after)

        def read(at: ResultCursor | None) -> Awaitable[LivePage]:
            return self.read_live(batch_id, after=at)

        return Follow(read, cursor, interval)

    async def watch(
        self, batch_id: UUID | str, *, interval: float = 0.5
    ) -> AsyncIterator[BatchView]:
        """Yield the batch every ``interval`` seconds until it is terminal (inclusive)."""
        while True:
            view = await self.get_batch(batch_id)
            yield view
            if view.status.is_terminal:
                return
            await anyio.sleep(interval)

    async def wait(self, batch_id: UUID | str, *, interval: float = 0.5) -> BatchView:
        """Wait until the batch is terminal and return it."""
        last = None
        async for view in self.watch(batch_id, interval=interval):
            last = view
        assert last is not None
        return last

    async def batch_trouble(self, batch_id: UUID | str) -> BatchTrouble:
        """What holds the batch back now: retries waiting, 429s, its latest errors
        (bounded reads: fine for every progress line of a batch of millions)."""
        uuid = public_uuid("batch", batch_id)
        return await self._threads.call(self.repo.batch_trouble, self.owner, uuid, now=self._now())

    async def error_kinds(self, batch_id: UUID | str, *, top: int = 5) -> ErrorKinds:
        """The ``top`` most frequent kinds of error of the batch, with an example each."""
        uuid = public_uuid("batch", batch_id)
        return await self._threads.call(self.repo.error_kinds, self.owner, uuid, top=top)

    async def live_daemons(self, *, stale_after: timedelta = timedelta(seconds=30)) -> int:
        """How many daemons run against this repository (a heartbeat within
        ``stale_after`` of the database's clock): none means no batch moves."""
        now = await self.database_time() or self._now()
        return await self._threads.call(self.repo.live_daemons, stale_before=now - stale_after)

    # ------------------------------------------------------------------- the database

    async def ping(self) -> None:
        """Return when the database answers; raise when it does not.

        Like ``database_time`` the call is abandoned (left to finish in its thread) when
        the caller is cancelled: a worker thread cannot be cancelled, and a probe with a
        timeout must answer on time while the database is down.
        """
        ping = getattr(self.repo, "ping", None)
        if ping is not None:
            await anyio.to_thread.run_sync(ping, abandon_on_cancel=True)

    async def database_time(self) -> datetime | None:
        """The database's clock (``None``: the repository has none but the host's)."""
        return await anyio.to_thread.run_sync(self.repo.database_time, abandon_on_cancel=True)


def parse_cursor(after: ResultCursor | str | None) -> ResultCursor | None:
    """``after`` as a ``ResultCursor``; a malformed text is a ``ValidationError``."""
    if after is None or isinstance(after, ResultCursor):
        return after
    try:
        return ResultCursor.parse(after)
    except ValueError as e:
        raise ValidationError(f"after: {e}", param="after") from None


def _take(it: Iterator[T], n: int) -> list[T]:
    return list(islice(it, n))
