"""Registration, heartbeat and maintenance: the daemon's upkeep on intervals.

The **heartbeat** first re-reads the database's clock (every time the daemon writes or
compares is the database's, ``fusillade.runtime.clock``), then refreshes this daemon's
row; a daemon declared dead meanwhile registers again. **Maintenance** reclaims the rows
of dead daemons and rows in flight past their time limit (bounded chunks), stamps
expired batches, sweeps the pending rows of cancelled and expired batches, forgets
idempotency keys past their time, purges what the retention rules remove
(``_purge``), advances batches whose creator died half-way, freezes the batches whose
requests all settled (``_finish_settled``: their "finished" log line and their webhook
event), gives up webhook events unsent at the horizon, and escalates the batches that
will miss their deadline at their current rate (``_review_deadlines``). Database errors
are logged and counted; the loops never die on them.
"""

from __future__ import annotations

import contextlib
import os
import socket
import typing
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import anyio

from fusillade import metrics
from fusillade.core.deadlines import review
from fusillade.core.scheduling.budget import Throttle
from fusillade.core.scheduling.shares import fraction_of
from fusillade.errors import NotFound, StoreError
from fusillade.runtime._base import DaemonBase, log
from fusillade.runtime.budgets import scope_name
from fusillade.store.interface import DaemonInfo, ReclaimStats

_LEASE_REFRESH = 1.0  # seconds between lease refreshes (at most the heartbeat interval)
_SETTLED_CHUNK = 100  # settled batches frozen per maintenance round


class Upkeep(DaemonBase):
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

        await self._every(self.config.heartbeat_interval.total_seconds(), "heartbeat", beat)

    async def _lease_loop(self) -> None:
        """Lease the budgets this daemon uses, every second and whenever a budget in use
        has no lease yet, and take this daemon's part of each (docs/scheduling.md)."""
        # Every holder re-reads the leases this often, so a new lease may be used once it
        # is this old (fraction_of): the others have shrunk their parts by then. A second
        # keeps a joining daemon's wait short; the query is one small transaction.
        interval = min(self.config.heartbeat_interval.total_seconds(), _LEASE_REFRESH)
        held = False
        while True:
            with anyio.move_on_after(interval):
                await self._lease_now.wait()
            self._lease_now = anyio.Event()
            self._publish_budget_metrics()
            scopes = self.budgets.leased_scopes(
                anyio.current_time(), recent=self.config.stale_after.total_seconds()
            )
            if not scopes and not held:
                continue
            try:
                holders = await self._db(
                    self.repo.sync.lease_budgets,
                    self.id,
                    [scope_name(s) for s in scopes],
                    now=self.now(),
                    stale_before=self.now() - self.config.stale_after,
                )
            except (StoreError, TimeoutError) as exc:
                metrics.DB_ERRORS.labels("leases").inc()
                log.warning("budget leases: database call failed: %s", exc)
                continue
            held = bool(scopes)
            now = self.now()
            fractions = {
                scope: fraction_of(h.holders, h.since, now, interval)
                for scope in scopes
                if (h := holders.get(scope_name(scope))) is not None
            }
            self.budgets.set_fractions(fractions, anyio.current_time())
            self._wake.set()

    def _publish_budget_metrics(self) -> None:
        """Budget gauges by upstream and model label (models not configured add up under
        "other", so the label set stays bounded)."""
        now = anyio.current_time()
        in_flight: dict[tuple[str, str], float] = {}
        reserved: dict[tuple[str, str], float] = {}
        limits: dict[tuple[str, str, str], float] = {}
        throttled: set[tuple[str, str, str]] = set()
        for scope in self.budgets.states(now):
            upstream, model = scope.scope
            key = (upstream, "" if model is None else self.config.metric_label(model))
            st = scope.state
            in_flight[key] = in_flight.get(key, 0) + st.in_flight
            reserved[key] = reserved.get(key, 0) + st.reserved_tokens
            for kind, value in (
                ("max_in_flight", st.max_in_flight),
                ("rpm", st.rpm),
                ("tpm", st.tpm),
            ):
                if value is not None:
                    limits[(*key, kind)] = limits.get((*key, kind), 0) + value
            if st.throttle is not None:
                throttled.add((*key, st.throttle))
        for key, n in in_flight.items():
            metrics.BUDGET_IN_FLIGHT.labels(*key).set(n)
            metrics.BUDGET_RESERVED_TOKENS.labels(*key).set(reserved[key])
        for lkey, value in limits.items():
            metrics.BUDGET_LIMIT.labels(*lkey).set(value)
        for reason in typing.get_args(Throttle):
            for key in in_flight:
                metrics.BUDGET_THROTTLED.labels(*key, reason).set(
                    1 if (*key, reason) in throttled else 0
                )

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
            stale = now - self.config.stale_after
            timed_out = now - (self.config.request_timeout * 1.5 + timedelta(seconds=60))
            requeued = await in_chunks(self.repo.sync.reclaim_dead, now=now, stale_before=stale)
            requeued += await in_chunks(
                self.repo.sync.reclaim_timed_out, now=now, claimed_before=timed_out
            )
            while await self._db(self.repo.sync.sweep, now=now, limit=5 * chunk) >= 5 * chunk:
                pass
            # idempotency keys past their time (each daemon may; SKIP LOCKED)
            while (
                await self._db(self.repo.sync.forget_idempotency_keys, now=now, limit=chunk)
                >= chunk
            ):
                pass
            await self._purge(now)
            # batches whose creation stopped moving (the creator died half-way): one
            # chunk of requests per call
            while await self._db(
                self.repo.sync.resume_creation, now=self.now(), stale_before=stale
            ):
                pass
            # events nobody sent by the horizon are given up (the freeze writes them:
            # _finish_settled below freezes the batches nobody read)
            given_up = await self._db(
                self.repo.sync.give_up_webhook_events,
                now=now,
                created_before=now - self.config.webhook_policy.horizon,
            )
            if given_up:
                log.info("webhooks: %d events given up unsent at the horizon", given_up)
            await self._review_deadlines()
            await self._finish_settled()
            if requeued:
                metrics.RECLAIMED.inc(requeued)
                self._wake_for_work()

        await self._every(self.config.maintenance_interval.total_seconds(), "maintenance", maintain)

    async def _finish_settled(self) -> None:
        """Read each batch whose requests have all settled, so it freezes and its
        "finished" line is logged (``fusillade.lifecycle``) even when nobody asks for it;
        the freeze is guarded, so of several daemons reading one batch, one logs it."""
        now = self.now()
        for batch_id in await self._db(self.repo.sync.settled_batches, limit=_SETTLED_CHUNK):
            with contextlib.suppress(NotFound):  # gone since (never, as batches are kept)
                await self._db(self.repo.sync.get_batch, None, batch_id, now=now)

    async def _purge(self, now: datetime) -> None:
        """Retention (docs/semantics.md): expired files, deleted files' content, old
        finished batches' requests and stopped daemons' rows, a bounded number of chunks
        per round, each its own short transaction on a worker thread, so claims and result
        writes interleave with it (SKIP LOCKED: daemons purging at once share the work)."""
        c = self.config
        finished_before = (
            None if c.finished_batch_retention is None else now - c.finished_batch_retention
        )
        for _ in range(c.purge_chunks_per_round):
            stats = await self._db(
                self.repo.sync.purge,
                now=now,
                finished_before=finished_before,
                stopped_before=now - c.stopped_daemon_retention,
                limit=c.purge_chunk,
            )
            metrics.PURGED.labels("requests").inc(stats.requests)
            metrics.PURGED.labels("templates").inc(stats.templates)
            if not stats.more:
                return

    async def _review_deadlines(self) -> None:
        """Sample the claimable batches' progress; escalate those that will miss their
        deadline at their current rate, clear those back on course
        (``fusillade.core.deadlines.review``: at least a minute of samples, the rate of
        the last ten). Only changes are written; the claim loop re-reads the batches."""
        now = self.now()
        batches = await self._db(self.repo.sync.claimable_batches, now=now)
        found = review(self._deadline_samples, batches, now)
        self._deadline_samples = found.samples
        if found.escalate or found.clear:
            await self._db(
                self.repo.sync.set_escalation, escalate=found.escalate, clear=found.clear, now=now
            )
            self._claimable_stale = True


def _version() -> str:
    from fusillade._version import __version__

    return __version__
