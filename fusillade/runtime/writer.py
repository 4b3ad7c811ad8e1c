"""Result writer: results buffered and written in bulk, each acknowledged after commit.

Theory of operation
-------------------
``submit`` appends a result and waits until the flush holding it has committed, then
returns whether it was written (False: the fence refused it, a lost race). The flusher
writes when ``flush_max`` results (or ``flush_max_bytes`` of bodies) are waiting or
``flush_interval`` after the first one arrived, at most ``write_concurrency`` flushes at
once (DB write concurrency is bounded apart from HTTP concurrency).

A flush that fails is handled by what the failure says (``fusillade.store.errors``):

- **transient** (``StoreUnavailable``: connection lost, timeout, serialization failure,
  deadlock; or ``TimeoutError`` from a record call that waited too long for a database
  thread): retried with backoff until it commits, so a result is never dropped while
  the daemon lives. Each failure is logged and counted (``fusillade_db_errors{loop=
  "writer"}``, ``fusillade_writer_failures_in_a_row``); after ``unhealthy_after`` in a
  row the daemon reads unhealthy (readiness false) until a write succeeds. A part of
  several results that keeps failing is also split in two, in case it is the part
  itself (a statement timeout on a huge part) rather than the database.
- **refused** (any other ``StoreError``: a data error no retry can fix, such as a value
  text cannot hold): the part is split in two and each half written on its own, down
  to the single result the database refuses. That one is recorded instead as failed,
  reason ``unstorable``, without its body; so one poison result never holds up the
  others (docs/semantics.md). Should even that be refused, the result is given up (an
  ERROR line): its row stays in flight until the time-limit reclaim takes it back.

Writes are fenced by owner and attempt, so writing a part again after a failure whose
outcome is unknown can only lose its race against itself. ``drain`` (at shutdown)
flushes whatever is left.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

import anyio

from fusillade import metrics
from fusillade.core.attempts import AttemptResult, ResultKind
from fusillade.core.bodies import storable_text
from fusillade.core.models import Failure, FailureReason
from fusillade.errors import StoreError, StoreUnavailable
from fusillade.store.interface import RecordStats

log = logging.getLogger("fusillade.writer")

_FIRST_DELAY: Final = 0.05
_MAX_DELAY: Final = 5.0
# Transient failures of one part of several results before it is split anyway.
_SPLIT_AFTER: Final = 3
_MAX_REASON: Final = 500


class _Pending:
    __slots__ = ("done", "refused", "result", "size", "written")

    def __init__(self, result: AttemptResult) -> None:
        self.result = result
        self.done = anyio.Event()
        self.written = False
        self.refused = False  # ``result`` is already the stand-in for a refused one
        self.size = len(result.request.response_body or "") + len(result.body_raw or b"")


Record = Callable[[Sequence[AttemptResult]], Awaitable[RecordStats]]


def unstorable(result: AttemptResult, error: StoreError) -> AttemptResult:
    """What is recorded for a result the database refused: the same attempt failed, reason
    ``unstorable``, the database's reason as the message, nothing of the upstream's answer."""
    message = storable_text(f"the database refused this result: {error}")[:_MAX_REASON]
    failure = Failure(FailureReason.UNSTORABLE, message)
    return result.claimed.result(ResultKind.FAILED, result.at, failure=failure)


class ResultWriter:
    def __init__(
        self,
        record: Record,
        *,
        flush_max: int = 500,
        flush_max_bytes: int = 32 * 1024 * 1024,
        flush_interval: float = 0.05,
        write_concurrency: int = 2,
        unhealthy_after: int = 3,
    ) -> None:
        self._record = record
        self._flush_max = flush_max
        self._flush_max_bytes = flush_max_bytes
        self._flush_interval = flush_interval
        self._slots = anyio.Semaphore(write_concurrency)
        self._unhealthy_after = unhealthy_after
        self._buffer: list[_Pending] = []
        self._buffered_bytes = 0
        self._arrived = anyio.Event()
        self._full = anyio.Event()
        self.failures_in_a_row = 0
        self.unstorable = 0

    @property
    def backlog(self) -> int:
        return len(self._buffer)

    async def submit(self, result: AttemptResult) -> bool:
        """Queue ``result``; return once it is committed (True) or lost its race (False).

        A result the database refuses is committed as its ``unstorable`` stand-in (True).
        """
        item = _Pending(result)
        self._buffer.append(item)
        self._buffered_bytes += item.size
        self._arrived.set()
        if len(self._buffer) >= self._flush_max or self._buffered_bytes >= self._flush_max_bytes:
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
        """The oldest results, up to ``flush_max`` of them and ``flush_max_bytes`` of
        bodies (at least one, however large)."""
        n = size = 0
        for item in self._buffer[: self._flush_max]:
            if n and size + item.size > self._flush_max_bytes:
                break
            n += 1
            size += item.size
        chunk, self._buffer = self._buffer[:n], self._buffer[n:]
        self._buffered_bytes -= size
        if not self._buffer:
            self._arrived = anyio.Event()
        if len(self._buffer) < self._flush_max and self._buffered_bytes < self._flush_max_bytes:
            self._full = anyio.Event()
        return chunk

    async def _flush(self, chunk: list[_Pending]) -> None:
        try:
            await self._write(chunk)
        finally:
            self._slots.release()

    async def _write(self, chunk: list[_Pending]) -> None:
        """Write ``chunk``, splitting it where the database refuses it (module docstring)."""
        todo = [chunk] if chunk else []  # a stack: the part on top is written next
        delay = _FIRST_DELAY
        transient = 0  # transient failures of the part on top
        while todo:
            part = todo[-1]
            try:
                with anyio.CancelScope(shield=True):
                    stats = await self._record([p.result for p in part])
            except (StoreUnavailable, TimeoutError) as exc:
                # TimeoutError: the record call waited too long for a database thread
                # (all busy, as in an outage), so nothing was written. Were it written,
                # the retry would only lose its race against itself (fenced writes).
                transient += 1
                self._failed(len(part), delay, str(exc) or "timed out waiting for the database")
                if len(part) > 1 and transient >= _SPLIT_AFTER:
                    todo[-1:] = _halves(part)
                    transient = 0
                await anyio.sleep(delay)
                delay = min(delay * 2, _MAX_DELAY)
                continue
            except StoreError as exc:
                transient = 0
                metrics.DB_ERRORS.labels("writer").inc()
                if len(part) > 1:
                    log.warning(
                        "the database refused %d results, writing them in halves: %s",
                        len(part),
                        exc,
                    )
                    todo[-1:] = _halves(part)
                else:
                    todo.pop()
                    self._refused(part[0], exc, todo)
                continue
            todo.pop()
            transient, delay = 0, _FIRST_DELAY
            self._succeeded()
            lost = set(stats.lost)
            for p in part:
                p.written = p.result.request_id not in lost
                p.done.set()

    def _failed(self, n: int, delay: float, why: str) -> None:
        self.failures_in_a_row += 1
        metrics.DB_ERRORS.labels("writer").inc()
        metrics.WRITER_FAILURES_IN_A_ROW.set(self.failures_in_a_row)
        log.warning(
            "writing %d results failed (%d in a row), retrying in %.2fs: %s",
            n,
            self.failures_in_a_row,
            delay,
            why,
        )
        if self.failures_in_a_row == self._unhealthy_after:
            log.error(
                "the result writer has failed %d times in a row: unhealthy (readiness "
                "false) until a write succeeds",
                self.failures_in_a_row,
            )

    def _succeeded(self) -> None:
        if self.failures_in_a_row >= self._unhealthy_after:
            log.info("the result writer recovered after %d failures", self.failures_in_a_row)
        self.failures_in_a_row = 0
        metrics.WRITER_FAILURES_IN_A_ROW.set(0)

    def _refused(self, item: _Pending, error: StoreError, todo: list[list[_Pending]]) -> None:
        """One result the database refused: write its stand-in next, or give up on it."""
        rid = item.result.request_id
        if item.refused:
            log.error("the database refused even the failure of request %s: %s", rid, error)
            item.done.set()  # not written: the time-limit reclaim takes the row back
            return
        log.error("the database refused the result of request %s, failing it: %s", rid, error)
        self.unstorable += 1
        metrics.RESULTS_UNSTORABLE.inc()
        item.result = unstorable(item.result, error)
        item.refused = True
        todo.append([item])

    async def drain(self) -> None:
        """Write everything buffered now (used at shutdown)."""
        while self._buffer:
            await self._write(self._take())


def _halves(part: list[_Pending]) -> list[list[_Pending]]:
    """``part`` in two, the first half last (written first from the stack)."""
    mid = len(part) // 2
    return [part[mid:], part[:mid]]
