"""The claim loop: claims as many due requests as there are free slots, and waits.

``ModelLimits`` says how many slots each active model has free; one statement claims
that many rows (claim and start are one write) and a task starts per row
(``requests.py``). The loop waits when every slot is busy, or when the database had
nothing due for a model (it is then "starved" until something changes): until a NOTIFY,
a freed slot for a model that had work, the next known retry time, or the poll interval.
Database errors are logged and retried with backoff; readiness turns false after a few
in a row. The loop never dies on them.
"""

from __future__ import annotations

import anyio
import anyio.abc

from fusillade import metrics
from fusillade.errors import StoreError
from fusillade.runtime._base import log
from fusillade.runtime.requests import RequestTasks

# After a slot frees, wait this long for others before claiming: one claim statement
# then fills several slots instead of one statement per finished request. Each slot
# also idles about this long per request, which a slow upstream's pipe fullness (P3)
# pays. 20 ms was right while a claim scanned the whole backlog; with the claim reading
# only its rows (claim.sql), 5 ms gave P3 0.92-0.93 against 0.89 at 20 ms and moved P1
# within its noise (docs/performance.md). New work (NOTIFY) is claimed at once.
_CLAIM_COALESCE = 0.005


class ClaimLoop(RequestTasks):
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
        deadline = now_loop + self.config.poll_interval.total_seconds()
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
