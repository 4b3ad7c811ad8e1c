"""The cancel watcher: aborts the requests of batches cancelled or expired meanwhile.

Every ``cancel_check_interval`` (or at once on a cancel NOTIFY) it asks which of the
batches with work in flight were cancelled or are past their window, and aborts those
requests: their results say why (``AbortReason``), recorded as the state table's cancel
or expire. Per-batch bookkeeping is dropped as soon as a batch has nothing in flight
(``requests.py``), so a daemon that runs for months does not grow with every batch.
"""

from __future__ import annotations

import anyio

from fusillade import metrics
from fusillade.errors import StoreError
from fusillade.runtime._base import DaemonBase, log


class CancelWatcher(DaemonBase):
    async def _cancel_watch_loop(self) -> None:
        async def check() -> None:
            batches = list(self._batch_in_flight)
            if not batches:
                return
            aborts = await self._db(self.repo.sync.batches_to_abort, batches, now=self.now())
            if not aborts:
                return
            for entry in list(self._in_flight.values()):
                reason = aborts.get(entry.request.batch_id)
                if reason is not None and entry.abort is None and not entry.released:
                    entry.abort = reason
                    entry.scope.cancel()

        while True:
            try:
                await check()
            except (StoreError, TimeoutError) as exc:
                metrics.DB_ERRORS.labels("cancel_watch").inc()
                log.warning("cancel watcher: database call failed: %s", exc)
            with anyio.move_on_after(self.config.cancel_check_interval.total_seconds()):
                await self._check_cancels.wait()
            self._check_cancels = anyio.Event()
