"""The state every part of the daemon shares, and the helpers they all use.

``Daemon`` (``fusillade.runtime.daemon``) is this base with its parts mixed in, one
module each: the claim loop (``claiming.py``), the request tasks (``requests.py``), the
cancel watcher (``cancels.py``), heartbeat and maintenance (``upkeep.py``), the LISTEN
loop (``listen.py``) and shutdown (``shutdown.py``). Each part reads and writes only the
attributes declared here.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar
from uuid import UUID, uuid4

import anyio
import httpx

from fusillade import metrics
from fusillade.core.attempts import AbortReason, AttemptResult, ClaimedRequest
from fusillade.core.batches import ClaimableBatch
from fusillade.core.deadlines import Sample
from fusillade.core.upstream_trouble import TroubleLog
from fusillade.runtime.budgets import Budgets
from fusillade.runtime.clock import Clock
from fusillade.runtime.config import DaemonConfig
from fusillade.runtime.dispatch import Dispatcher
from fusillade.runtime.limits import ModelLimits
from fusillade.runtime.repo import AsyncRepository
from fusillade.runtime.writer import ResultWriter
from fusillade.store.interface import RecordStats, Repository

log = logging.getLogger("fusillade.daemon")
R = TypeVar("R")


class InFlight:
    """One request this daemon is sending, and how to abort it."""

    __slots__ = ("abort", "released", "request", "scope", "series")

    def __init__(self, request: ClaimedRequest, series: metrics.ModelSeries) -> None:
        self.request = request
        self.series = series  # its model's metrics (a bounded label)
        self.scope = anyio.CancelScope()
        self.abort: AbortReason | None = None  # aborted: its result says why
        self.released = False  # aborted at shutdown: no result, the row is released


class DaemonBase:
    def __init__(
        self,
        repo: Repository,
        config: DaemonConfig | None = None,
        *,
        daemon_id: UUID | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.config = config or DaemonConfig()
        # the backoff's jitter, drawn from [0, 1); tests pass their own to know every
        # retry's time
        self._jitter = jitter
        self.id = daemon_id or uuid4()
        self.repo = AsyncRepository(repo, threads=self.config.db_write_concurrency + 4)
        self.limits = ModelLimits(self.config.concurrency_for)
        self.budgets = Budgets(self.config)
        self.dispatcher = Dispatcher(self.config, transport=transport)
        # upstream trouble counted for the logs (runtime/upstream_trouble.py)
        self.trouble = TroubleLog(self.config.trouble_interval.total_seconds())
        # seconds, as anyio takes them (read on every database call)
        self._db_call_timeout = self.config.db_call_timeout.total_seconds()
        self.writer = ResultWriter(
            self._record,
            flush_max=self.config.flush_max,
            flush_interval=self.config.flush_interval.total_seconds(),
            write_concurrency=self.config.db_write_concurrency,
            unhealthy_after=self.config.unhealthy_after_failures,
        )
        # requests in flight, and how many per batch and per (batch, model) pair (dropped
        # at zero)
        self._in_flight: dict[UUID, InFlight] = {}
        self._batch_in_flight: dict[UUID, int] = {}
        self._pair_in_flight: dict[tuple[UUID, str], int] = {}
        self._tasks_done = anyio.Event()
        self._tasks_done.set()
        # the claim loop's wake-ups
        self._wake = anyio.Event()
        self._new_work = False  # the wake-up came from new work, not a freed slot
        self._stopping = False
        self._stop_requested = anyio.Event()
        # the claim loop's snapshot of the claimable batches (claimable_batches),
        # refreshed when stale (NOTIFY, poll, due time)
        self._claimable: list[ClaimableBatch] = []
        self._claimable_stale = True
        self._claimable_at = 0.0  # loop time of the last refresh
        # (batch, model) pairs that gave fewer rows than allotted: nothing more is due
        # there until the next refresh; and the models with a pair not starved
        self._starved: set[tuple[UUID, str]] = set()
        self._hungry: set[str] = set()
        self._next_due: float | None = None
        self._check_cancels = anyio.Event()
        self._lease_now = anyio.Event()  # a budget in use has no lease yet
        # set (and replaced) when a request settles while requests wait for tokens
        self._tokens_returned = anyio.Event()
        # maintenance's samples of each claimable batch's progress (core.deadlines)
        self._deadline_samples: dict[UUID, tuple[Sample, ...]] = {}
        # health and counters
        self._claim_failures = 0
        self._heartbeat_ok = True
        self._recorded = 0
        self._lost = 0
        self._clock: Clock | None = None

    def now(self) -> datetime:
        assert self._clock is not None, "the daemon is not running"
        return self._clock.now()

    def at(self, loop_time: float) -> datetime:
        """The database's time at ``loop_time`` (``anyio.current_time()`` scale)."""
        assert self._clock is not None, "the daemon is not running"
        return self._clock.at(loop_time)

    async def _db(self, fn: Callable[..., R], *args: Any, **kwargs: Any) -> R:
        with anyio.fail_after(self._db_call_timeout):
            return await self.repo.call(fn, *args, **kwargs)

    async def _database_time(self) -> datetime | None:
        return await self._db(self.repo.sync.database_time)

    async def _record(self, results: Sequence[AttemptResult]) -> RecordStats:
        started = anyio.current_time()
        stats = await self._db(self.repo.sync.record_results, self.id, results)
        metrics.FLUSH_SECONDS.observe(anyio.current_time() - started)
        metrics.FLUSH_SIZE.observe(len(results))
        self._recorded += stats.written
        if stats.lost:
            self._lost += len(stats.lost)
            metrics.LOST_RACES.inc(len(stats.lost))
        return stats

    def _wake_for_work(self) -> None:
        """New work may be due (NOTIFY, reclaimed rows): look at every batch again."""
        self._starved.clear()
        self._claimable_stale = True
        self._new_work = True
        self._wake.set()
