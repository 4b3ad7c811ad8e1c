"""The daemon: claims due requests, sends them, records every result exactly once.

Theory of operation
-------------------
``Daemon.run`` registers the daemon, then runs these tasks in one task group, each
written in its own module (a part mixed into ``Daemon``; their shared state is
``_base.DaemonBase``):

- the **claim loop** (``claiming.py``) claims as many due requests as models have free
  slots, and starts a **request task** (``requests.py``) per row: it sends the request,
  has the core decide the outcome and the request's new state, and submits the result
  to the **writer** (``writer.py``), which writes results in bulk and acknowledges each
  after commit (exactly once: every write is a compare-and-set under owner and attempt).
- the **cancel watcher** (``cancels.py``) aborts the requests of batches cancelled or
  expired meanwhile; their results say why.
- **heartbeat** and **maintenance** (``upkeep.py``) run on intervals: the database's
  clock and this daemon's liveness; reclaims, expiry and sweeps.
- **webhook delivery** (``webhooks.py``) sends the outbox's events of the owners this
  daemon has a webhook for, at least once, signed, with backoff (docs/webhooks.md).
- the **listener** (``listen.py``, PostgreSQL LISTEN when the repository offers it)
  wakes the claim loop for new work and the cancel watcher for cancellations.

``stop()`` starts a graceful shutdown (``shutdown.py``): claiming stops, in-flight
requests get ``shutdown_grace`` seconds, the rest are aborted without a result, results
waiting in the writer are written, every row still held is released (not counted as an
attempt, so another daemon takes it at once) and the daemon is marked stopped. The same
clean-up runs, shielded, when ``run`` is cancelled from outside.
"""

from __future__ import annotations

from uuid import UUID

import anyio
import anyio.abc
import attrs

from fusillade.runtime.budgets import ScopeState
from fusillade.runtime.cancels import CancelWatcher
from fusillade.runtime.claiming import ClaimLoop
from fusillade.runtime.clock import Clock
from fusillade.runtime.limits import ModelStats
from fusillade.runtime.listen import Listener
from fusillade.runtime.shutdown import Shutdown
from fusillade.runtime.upkeep import Upkeep
from fusillade.runtime.webhooks import WebhookSender

__all__ = ["Daemon", "DaemonStats"]


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
    # why requests wait for a budget now ("rpm", "tpm", "max_in_flight", "slow_start")
    throttled: tuple[str, ...] = ()
    budgets: tuple[ScopeState, ...] = ()


class Daemon(ClaimLoop, CancelWatcher, Upkeep, WebhookSender, Listener, Shutdown):
    """One daemon. ``await daemon.run()`` (or ``nursery.start(daemon.run)``) runs it.

    ``Daemon(repo, config=None, *, daemon_id=None, transport=None, jitter=random.random)``:
    ``repo`` is the repository it works on; ``transport`` replaces the HTTP transport
    (tests, mocks); ``jitter`` draws the backoff's jitter from ``[0, 1)`` (tests pass
    their own to know every retry's time).
    """

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

    def in_flight_of(self, batch_id: UUID) -> int:
        """How many of the batch's requests this daemon has sent and awaits answers to
        (the batch's ``in_progress`` count also holds answers not yet recorded, and other
        daemons' requests)."""
        return self._batch_in_flight.get(batch_id, 0)

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
            throttled=tuple(self.budgets.throttled(anyio.current_time())),
            budgets=tuple(self.budgets.states(anyio.current_time())),
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
                services.start_soon(self._lease_loop)
                services.start_soon(self._maintenance_loop)
                services.start_soon(self._cancel_watch_loop)
                services.start_soon(self._listen_loop)
                services.start_soon(self._trouble_loop)
                services.start_soon(self._webhook_loop)
                async with anyio.create_task_group() as requests:
                    task_status.started()
                    await self._claim_loop(requests)
                    await self._wind_down()
                await self.writer.drain()
                services.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(self._db_call_timeout):
                await self._hand_back()
            await self.dispatcher.aclose()
