"""The daemon: claims due requests, sends them, records every result exactly once.

Theory of operation
-------------------
``Daemon.run`` registers the daemon, then runs these tasks in one task group:

- the **claim loop** asks ``ModelLimits`` how many slots each active model has free,
  claims that many rows in one statement (claim and start are one write), and starts one
  task per row. It waits when every slot is busy, or when the database had nothing due
  (until a NOTIFY, a freed slot for a model that had work, the next known retry time, or
  the poll interval). Database errors are logged and retried with backoff; readiness
  turns false after a few in a row. The loop never dies on them.
- each **request task** sends its request (``Dispatcher``), classifies the outcome and
  decides retry or give-up (``fusillade.core.retry``), frees its model slot, then
  submits the result to the **writer**, which writes results in bulk and acknowledges
  each after commit (exactly-once record: every write is fenced by owner and attempt).
- the **cancel watcher** asks every ``cancel_check_interval`` which of the batches with
  work in flight were cancelled or expired, and aborts those requests (their result is
  ``canceled``). Per-batch bookkeeping is dropped as soon as a batch has nothing in
  flight, so a daemon that runs for months does not grow with every batch it has seen.
- **heartbeat** (which first re-reads the database's clock: every time the daemon writes
  or compares is the database's, ``fusillade.runtime.clock``) and **maintenance**
  (reclaim rows of dead daemons and timed-out rows, stamp expired batches, sweep
  cancelled/expired pending rows) run on intervals.
- the **listener** (PostgreSQL LISTEN, when the repository offers it) wakes the claim
  loop for new batches and retries, and the cancel watcher for cancellations. When the
  repository finds that notifications cannot reach it (its probe never comes back, as
  through PgBouncer in transaction pooling), the listener says so once in the log and
  ends: the claim loop's poll interval and the cancel watcher's interval remain.

``stop()`` starts a graceful shutdown: claiming stops, in-flight requests get
``shutdown_grace`` seconds, the rest are aborted without a result, results waiting in
the writer are written, every row still held is released (not counted as an attempt,
so another daemon takes it at once) and the daemon is marked stopped. The same
clean-up runs, shielded, when ``run`` is cancelled from outside.
"""

from __future__ import annotations

import logging
import os
import random
import socket
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar
from uuid import UUID, uuid4

import anyio
import anyio.abc
import anyio.to_thread
import attrs
import httpx

from fusillade import metrics
from fusillade.core.models import Failure, FailureReason
from fusillade.core.retry import (
    GiveUp,
    HttpResponse,
    RetryAt,
    Success,
    classify,
    decide,
)
from fusillade.errors import StoreError
from fusillade.runtime.clock import Clock
from fusillade.runtime.config import DaemonConfig
from fusillade.runtime.dispatch import Dispatcher, Sent
from fusillade.runtime.limits import ModelLimits, ModelStats
from fusillade.runtime.repo import AsyncRepository
from fusillade.runtime.writer import ResultWriter
from fusillade.store.interface import (
    AttemptResult,
    ClaimedRequest,
    DaemonInfo,
    ReclaimStats,
    RecordStats,
    Repository,
    ResultKind,
)

log = logging.getLogger("fusillade.daemon")
R = TypeVar("R")
_SHUTDOWN = "shutdown"
# After a slot frees, wait this long for others before claiming: one claim statement
# then fills several slots instead of one statement per finished request. Each slot
# also idles about this long per request, which a slow upstream's pipe fullness (P3)
# pays. 20 ms was right while a claim scanned the whole backlog; with the claim reading
# only its rows (claim.sql), 5 ms gave P3 0.92-0.93 against 0.89 at 20 ms and moved P1
# within its noise (docs/performance.md). New work (NOTIFY) is claimed at once.
_CLAIM_COALESCE = 0.005
# A new listener's probe notification normally arrives within milliseconds; none within
# this long means notifications cannot reach the daemon (PgBouncer in transaction
# pooling): it then relies on polling alone. A false "no" (a very slow database) costs
# only latency, never work.
_PROBE_TIMEOUT = 5.0


@attrs.frozen
class DaemonStats:
    """A snapshot of what the daemon is doing (``Daemon.statistics()``)."""

    daemon_id: UUID
    in_flight: int
    batches_in_flight: int
    writer_backlog: int
    shards: int
    models: tuple[ModelStats, ...]
    healthy: bool
    recorded: int
    lost_races: int


class _InFlight:
    __slots__ = ("abort_reason", "label", "request", "scope")

    def __init__(self, request: ClaimedRequest, label: str) -> None:
        self.request = request
        self.label = label  # the request's model label in the metrics (bounded)
        self.scope = anyio.CancelScope()
        self.abort_reason: str | None = None


class Daemon:
    """One daemon. ``await daemon.run()`` (or ``nursery.start(daemon.run)``) runs it.

    ``jitter`` draws the backoff's jitter from ``[0, 1)`` (``random.random`` by default);
    tests pass their own to know every retry's time.
    """

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
        self._jitter = jitter
        self.id = daemon_id or uuid4()
        self.repo = AsyncRepository(repo, threads=self.config.db_write_concurrency + 4)
        self.limits = ModelLimits(self.config.concurrency_for)
        self.dispatcher = Dispatcher(self.config, transport=transport)
        self.writer = ResultWriter(
            self._record,
            flush_max=self.config.flush_max,
            flush_interval=self.config.flush_interval,
            write_concurrency=self.config.db_write_concurrency,
            unhealthy_after=self.config.unhealthy_after_failures,
        )
        self._in_flight: dict[UUID, _InFlight] = {}
        self._batch_in_flight: dict[UUID, int] = {}
        self._wake = anyio.Event()
        self._new_work = False  # the wake-up came from new work, not a freed slot
        self._stopping = False
        self._stop_requested = anyio.Event()
        self._models: list[str] = []
        self._models_stale = True
        self._starved: set[str] = set()
        self._next_due: float | None = None
        self._claim_failures = 0
        self._heartbeat_ok = True
        self._recorded = 0
        self._lost = 0
        self._clock: Clock | None = None
        self._tasks_done = anyio.Event()
        self._tasks_done.set()

    # ------------------------------------------------------------------ public

    @property
    def healthy(self) -> bool:
        """False after repeated database failures of the claim loop or the heartbeat."""
        return (
            self._claim_failures < self.config.unhealthy_after_failures
            and self._heartbeat_ok
            and self.writer.failures_in_a_row < self.config.unhealthy_after_failures
        )

    def stop(self) -> None:
        """Begin a graceful shutdown; ``run`` returns when it is complete."""
        self._stopping = True
        self._stop_requested.set()
        self._wake.set()

    def set_concurrency(self, model: str, limit: int) -> None:
        """Change a model's concurrency while running."""
        self.limits.set_limit(model, limit)
        self._wake.set()

    def statistics(self) -> DaemonStats:
        return DaemonStats(
            daemon_id=self.id,
            in_flight=len(self._in_flight),
            batches_in_flight=len(self._batch_in_flight),
            writer_backlog=self.writer.backlog,
            shards=self.dispatcher.shard_count,
            models=self.limits.statistics(anyio.current_time()),
            healthy=self.healthy,
            recorded=self._recorded,
            lost_races=self._lost,
        )

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Run until ``stop()`` (graceful) or cancellation (clean-up still runs)."""
        self._clock = Clock()
        await self._register()
        try:
            async with anyio.create_task_group() as services:
                await services.start(self.writer.run)
                services.start_soon(self._heartbeat_loop)
                services.start_soon(self._maintenance_loop)
                services.start_soon(self._cancel_watch_loop)
                services.start_soon(self._listen_loop)
                async with anyio.create_task_group() as requests:
                    task_status.started()
                    await self._claim_loop(requests)
                    await self._wind_down()
                await self.writer.drain()
                services.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(self.config.db_call_timeout):
                await self._hand_back()
            await self.dispatcher.aclose()

    # --------------------------------------------------------------- helpers

    def now(self) -> datetime:
        assert self._clock is not None, "the daemon is not running"
        return self._clock.now()

    async def _db(self, fn: Callable[..., R], *args: Any, **kwargs: Any) -> R:
        with anyio.fail_after(self.config.db_call_timeout):
            return await self.repo.call(fn, *args, **kwargs)

    async def _register(self) -> None:
        info = DaemonInfo(
            id=self.id,
            hostname=socket.gethostname(),
            pid=os.getpid(),
            version=_version(),
            config={
                "default_concurrency": self.config.default_concurrency,
                "model_concurrency": dict(self.config.model_concurrency),
            },
        )
        delay = 0.1
        while True:
            try:
                assert self._clock is not None
                await self._clock.sync(self._database_time)
                await self._db(self.repo.sync.register_daemon, info, now=self.now())
            except (StoreError, TimeoutError) as exc:
                log.warning("daemon registration failed, retrying: %s", exc)
                await anyio.sleep(delay)
                delay = min(delay * 2, 5.0)
            else:
                return

    async def _database_time(self) -> datetime | None:
        return await self._db(self.repo.sync.database_time)

    async def _record(self, results: Any) -> RecordStats:
        started = anyio.current_time()
        stats = await self._db(self.repo.sync.record_results, self.id, results)
        metrics.FLUSH_SECONDS.observe(anyio.current_time() - started)
        metrics.FLUSH_SIZE.observe(len(results))
        self._recorded += stats.written
        if stats.lost:
            self._lost += len(stats.lost)
            metrics.LOST_RACES.inc(len(stats.lost))
        return stats

    # ------------------------------------------------------------ claim loop

    async def _claim_loop(self, tg: anyio.abc.TaskGroup) -> None:
        backoff = 0.05
        while not self._stopping:
            now_loop = anyio.current_time()
            if self._models_stale:
                try:
                    self._models = await self._db(self.repo.sync.active_models, now=self.now())
                    self._models_stale = False
                except (StoreError, TimeoutError) as exc:
                    backoff = await self._claim_failed(exc, backoff)
                    continue
            candidates = [m for m in self._models if m not in self._starved]
            slots = self.limits.free_slots(candidates, now_loop)
            if slots:
                started = anyio.current_time()
                try:
                    claimed = await self._db(self.repo.sync.claim, self.id, slots, now=self.now())
                except (StoreError, TimeoutError) as exc:
                    backoff = await self._claim_failed(exc, backoff)
                    continue
                metrics.CLAIM_SECONDS.observe(anyio.current_time() - started)
                self._claim_failures, backoff = 0, 0.05
                got: dict[str, int] = {}
                for req in claimed:
                    got[req.model] = got.get(req.model, 0) + 1
                    self._start_request(tg, req)
                self._starved |= {m for m, n in slots.items() if got.get(m, 0) < n}
                if self._stopping:
                    break
                if claimed and not self._starved.issuperset(slots):
                    continue  # every model got all it asked for: there may be more
            await self._wait_for_work()

    async def _claim_failed(self, exc: Exception, backoff: float) -> float:
        self._claim_failures += 1
        metrics.DB_ERRORS.labels("claim").inc()
        log.warning("claim loop: database call failed (%d in a row): %s", self._claim_failures, exc)
        with anyio.move_on_after(backoff):
            await self._stop_requested.wait()
        return min(backoff * 2, 5.0)

    async def _wait_for_work(self) -> None:
        now_loop = anyio.current_time()
        deadline = now_loop + self.config.poll_interval
        for t in (self._next_due, self.limits.next_unpause(now_loop)):
            if t is not None:
                deadline = min(deadline, t)
        woke = False
        with anyio.move_on_after(max(0.0, deadline - now_loop)):
            await self._wake.wait()
            woke = True
        self._wake = anyio.Event()
        new_work, self._new_work = self._new_work, False
        if not woke:
            # Poll interval or a known due time: look at every model again.
            self._starved.clear()
            self._models_stale = True
            if self._next_due is not None and self._next_due <= anyio.current_time():
                self._next_due = None
        elif not self._stopping and not new_work:
            await anyio.sleep(_CLAIM_COALESCE)

    def _wake_for_work(self) -> None:
        self._starved.clear()
        self._models_stale = True
        self._new_work = True
        self._wake.set()

    # ------------------------------------------------------------- requests

    def _start_request(self, tg: anyio.abc.TaskGroup, req: ClaimedRequest) -> None:
        entry = _InFlight(req, self.config.metric_label(req.model))
        self._in_flight[req.id] = entry
        self._batch_in_flight[req.batch_id] = self._batch_in_flight.get(req.batch_id, 0) + 1
        self.limits.acquire_nowait(req.model)
        metrics.CLAIMED.labels(entry.label).inc()
        metrics.IN_FLIGHT.labels(entry.label).inc()
        if self._tasks_done.is_set():
            self._tasks_done = anyio.Event()
        tg.start_soon(self._run_request, entry)

    def _finish_request(self, entry: _InFlight) -> None:
        req = entry.request
        del self._in_flight[req.id]
        left = self._batch_in_flight[req.batch_id] - 1
        if left:
            self._batch_in_flight[req.batch_id] = left
        else:
            del self._batch_in_flight[req.batch_id]  # nothing kept for finished batches
        self.limits.release(req.model)
        metrics.IN_FLIGHT.labels(entry.label).dec()
        if not self._in_flight:
            self._tasks_done.set()
        if req.model not in self._starved:
            self._wake.set()

    async def _run_request(self, entry: _InFlight) -> None:
        req = entry.request
        started = anyio.current_time()
        sent: Sent | None = None
        try:
            with entry.scope:
                sent = await self.dispatcher.send(req)
        finally:
            self._finish_request(entry)
        metrics.UPSTREAM_SECONDS.labels(entry.label).observe(anyio.current_time() - started)
        if sent is None:  # aborted
            if entry.abort_reason in (None, _SHUTDOWN):
                return  # released at shutdown, without a result
            reason = (
                FailureReason.EXPIRED
                if entry.abort_reason == "expired"
                else FailureReason.CANCELLED
            )
            message = "batch expired" if reason is FailureReason.EXPIRED else "batch cancelled"
            metrics.CANCELED.labels(reason.value).inc()
            result = AttemptResult(
                req.id,
                req.attempt,
                ResultKind.CANCELED,
                self.now(),
                failure=Failure(reason, message),
            )
        else:
            result = self._result_of(req, sent, entry.label)
        written = await self.writer.submit(result)
        if written and result.kind is ResultKind.RETRY and result.not_before is not None:
            assert self._clock is not None
            due = self._clock.loop_time_at(result.not_before)
            self._next_due = due if self._next_due is None else min(self._next_due, due)
            self._wake.set()

    def _result_of(self, req: ClaimedRequest, sent: Sent, label: str) -> AttemptResult:
        now = self.now()
        verdict = classify(sent.outcome, self.config.retry)
        if isinstance(verdict, Success):
            metrics.COMPLETED.labels(label, str(verdict.response.status)).inc()
            return AttemptResult(
                req.id,
                req.attempt,
                ResultKind.SUCCEEDED,
                now,
                status=verdict.response.status,
                body=sent.json_body if sent.json_body is not None else verdict.response.body,
                body_is_json=sent.json_body is not None,
                body_raw=sent.body_raw,
                input_tokens=sent.input_tokens,
                output_tokens=sent.output_tokens,
            )
        decision = decide(
            verdict,
            budget_used=req.budget_used,
            now=now,
            deadline=req.batch_expires_at,
            jitter=self._jitter(),
            policy=self.config.retry,
        )
        if decision.pause_until is not None:
            assert self._clock is not None
            self.limits.pause(req.model, self._clock.loop_time_at(decision.pause_until))
        failure = decision.failure
        response = sent.outcome if isinstance(sent.outcome, HttpResponse) else None
        status = response.status if response else None
        body = response.body if response else None
        body_raw = sent.body_raw if response else None
        if isinstance(decision, RetryAt):
            metrics.RETRIED.labels(label, failure.reason.value).inc()
            return AttemptResult(
                req.id,
                req.attempt,
                ResultKind.RETRY,
                now,
                status=status,
                body=body,
                failure=failure,
                not_before=decision.not_before,
                body_raw=body_raw,
            )
        assert isinstance(decision, GiveUp)
        metrics.FAILED.labels(label, failure.reason.value).inc()
        return AttemptResult(
            req.id,
            req.attempt,
            ResultKind.FAILED,
            now,
            status=status,
            body=body,
            failure=failure,
            body_raw=body_raw,
        )

    # ------------------------------------------------------------ shutdown

    async def _wind_down(self) -> None:
        """Give in-flight requests the grace period, then abort the rest."""
        with anyio.move_on_after(self.config.shutdown_grace):
            await self._tasks_done.wait()
        for entry in list(self._in_flight.values()):
            entry.abort_reason = _SHUTDOWN
            entry.scope.cancel()

    async def _hand_back(self) -> None:
        """Release every row this daemon still holds and mark it stopped."""
        try:
            await self.writer.drain()
            released = await self.repo.call(self.repo.sync.release, self.id, now=self.now())
            await self.repo.call(self.repo.sync.stop_daemon, self.id, now=self.now())
            if released:
                log.info("released %d in-flight requests", released)
        except StoreError as exc:
            log.warning("could not release rows at shutdown (they will be reclaimed): %s", exc)

    # ------------------------------------------------------ periodic loops

    async def _every(self, interval: float, name: str, body: Callable[[], Awaitable[None]]) -> None:
        while True:
            try:
                await body()
            except (StoreError, TimeoutError) as exc:
                metrics.DB_ERRORS.labels(name).inc()
                log.warning("%s: database call failed: %s", name, exc)
            await anyio.sleep(interval)

    async def _heartbeat_loop(self) -> None:
        async def beat() -> None:
            try:
                assert self._clock is not None
                await self._clock.sync(self._database_time)
                alive = await self._db(self.repo.sync.heartbeat, self.id, now=self.now())
            except (StoreError, TimeoutError):
                self._heartbeat_ok = False
                raise
            self._heartbeat_ok = True
            if not alive:
                log.warning("this daemon was declared dead (heartbeat too old); re-registering")
                await self._register()

        await self._every(self.config.heartbeat_interval, "heartbeat", beat)

    async def _maintenance_loop(self) -> None:
        chunk = 1000

        async def in_chunks(reclaim: Callable[..., ReclaimStats], **kwargs: Any) -> int:
            """Run a bounded reclaim until a chunk comes back short; rows touched."""
            total = 0
            while True:
                stats = await self._db(
                    reclaim, max_attempts=self.config.retry.max_attempts, limit=chunk, **kwargs
                )
                total += stats.requeued + stats.failed
                if stats.requeued + stats.failed < chunk:
                    return total

        async def maintain() -> None:
            now = self.now()
            stale = now - timedelta(seconds=self.config.stale_after)
            timed_out = now - timedelta(seconds=self.config.request_timeout * 1.5 + 60)
            requeued = await in_chunks(self.repo.sync.reclaim_dead, now=now, stale_before=stale)
            requeued += await in_chunks(
                self.repo.sync.reclaim_timed_out, now=now, claimed_before=timed_out
            )
            while await self._db(self.repo.sync.sweep, now=now, limit=5 * chunk) >= 5 * chunk:
                pass
            # batches whose creation stopped moving (the creator died half-way): one
            # chunk of requests per call
            while await self._db(
                self.repo.sync.resume_creation, now=self.now(), stale_before=stale
            ):
                pass
            if requeued:
                metrics.RECLAIMED.inc(requeued)
                self._wake_for_work()

        await self._every(self.config.maintenance_interval, "maintenance", maintain)

    async def _cancel_watch_loop(self) -> None:
        self._check_cancels = anyio.Event()

        async def check() -> None:
            batches = list(self._batch_in_flight)
            if not batches:
                return
            aborts = await self._db(self.repo.sync.batches_to_abort, batches, now=self.now())
            if not aborts:
                return
            for entry in list(self._in_flight.values()):
                reason = aborts.get(entry.request.batch_id)
                if reason is not None and entry.abort_reason is None:
                    entry.abort_reason = reason
                    entry.scope.cancel()

        while True:
            try:
                await check()
            except (StoreError, TimeoutError) as exc:
                metrics.DB_ERRORS.labels("cancel_watch").inc()
                log.warning("cancel watcher: database call failed: %s", exc)
            with anyio.move_on_after(self.config.cancel_check_interval):
                await self._check_cancels.wait()
            self._check_cancels = anyio.Event()

    async def _listen_loop(self) -> None:
        listen = getattr(self.repo.sync, "listen", None)
        if listen is None:
            return
        listener: Any = None
        probe_deadline = 0.0
        limiter = anyio.CapacityLimiter(1)
        try:
            while True:
                try:
                    if listener is None:
                        listener = await anyio.to_thread.run_sync(listen, limiter=limiter)
                        probe_deadline = anyio.current_time() + _PROBE_TIMEOUT
                    if not listener.heard and anyio.current_time() > probe_deadline:
                        log.warning(
                            "listener: notifications do not reach this daemon (its probe "
                            "never came back: PgBouncer in transaction pooling?); new work "
                            "is found by polling every %g s",
                            self.config.poll_interval,
                        )
                        return
                    channels = await anyio.to_thread.run_sync(
                        listener.wait, 1.0, limiter=limiter, abandon_on_cancel=True
                    )
                except StoreError as exc:
                    log.warning("listener: %s", exc)
                    if listener is not None:
                        listener.close()
                        listener = None
                    await anyio.sleep(1.0)
                    continue
                if "fusillade_work" in channels:
                    self._wake_for_work()
                if "fusillade_cancel" in channels:
                    self._check_cancels.set()
        finally:
            if listener is not None:
                listener.close()


def _version() -> str:
    from fusillade._version import __version__

    return __version__
