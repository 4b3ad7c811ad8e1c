"""Result writer: results buffered and written in bulk, each acknowledged after commit.

Theory of operation
-------------------
``submit`` appends a result and waits until the flush holding it has committed, then
returns whether it was written (False: the fence refused it, a lost race). The flusher
writes when ``flush_max`` results are waiting or ``flush_interval`` after the first one
arrived, at most ``write_concurrency`` flushes at once (DB write concurrency is bounded
apart from HTTP concurrency). A flush that fails (``StoreError``, or ``TimeoutError``
from a record call that timed out) is retried with backoff until it commits: a result
is never dropped while the daemon lives. ``drain`` (at shutdown) flushes whatever is
left.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

import anyio

from fusillade.errors import StoreError
from fusillade.store.interface import AttemptResult, RecordStats

log = logging.getLogger("fusillade.writer")


class _Pending:
    __slots__ = ("done", "result", "written")

    def __init__(self, result: AttemptResult) -> None:
        self.result = result
        self.done = anyio.Event()
        self.written = False


Record = Callable[[Sequence[AttemptResult]], Awaitable[RecordStats]]


class ResultWriter:
    def __init__(
        self,
        record: Record,
        *,
        flush_max: int = 500,
        flush_interval: float = 0.05,
        write_concurrency: int = 2,
        on_flush: Callable[[int, RecordStats, float], None] | None = None,
    ) -> None:
        self._record = record
        self._flush_max = flush_max
        self._flush_interval = flush_interval
        self._slots = anyio.Semaphore(write_concurrency)
        self._buffer: list[_Pending] = []
        self._arrived = anyio.Event()
        self._full = anyio.Event()
        self._on_flush = on_flush
        self.failures_in_a_row = 0

    @property
    def backlog(self) -> int:
        return len(self._buffer)

    async def submit(self, result: AttemptResult) -> bool:
        """Queue ``result``; return once it is committed (True) or lost its race (False)."""
        item = _Pending(result)
        self._buffer.append(item)
        self._arrived.set()
        if len(self._buffer) >= self._flush_max:
            self._full.set()
        await item.done.wait()
        return item.written

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Flush forever (until cancelled); cancel only after ``drain``."""
        async with anyio.create_task_group() as tg:
            task_status.started()
            while True:
                await self._arrived.wait()
                with anyio.move_on_after(self._flush_interval):
                    await self._full.wait()
                await self._slots.acquire()
                tg.start_soon(self._flush, self._take())

    def _take(self) -> list[_Pending]:
        chunk, self._buffer = self._buffer[: self._flush_max], self._buffer[self._flush_max :]
        if not self._buffer:
            self._arrived = anyio.Event()
        if len(self._buffer) < self._flush_max:
            self._full = anyio.Event()
        return chunk

    async def _flush(self, chunk: list[_Pending]) -> None:
        try:
            await self._write(chunk)
        finally:
            self._slots.release()

    async def _write(self, chunk: list[_Pending]) -> None:
        if not chunk:
            return
        delay = 0.05
        while True:
            started = anyio.current_time()
            try:
                with anyio.CancelScope(shield=True):
                    stats = await self._record([p.result for p in chunk])
            except (StoreError, TimeoutError) as exc:
                # TimeoutError: the record call waited too long for a database thread
                # (all busy, as in an outage), so nothing was written. Were it written,
                # the retry would only lose its race against itself (fenced writes).
                self.failures_in_a_row += 1
                log.warning(
                    "writing %d results failed, retrying in %.2fs: %s",
                    len(chunk),
                    delay,
                    str(exc) or "timed out waiting for the database",
                )
                await anyio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self.failures_in_a_row = 0
            break
        if self._on_flush is not None:
            self._on_flush(len(chunk), stats, anyio.current_time() - started)
        lost = set(stats.lost)
        for p in chunk:
            p.written = p.result.request_id not in lost
            p.done.set()

    async def drain(self) -> None:
        """Write everything buffered now (used at shutdown)."""
        while self._buffer:
            await self._write(self._take())
