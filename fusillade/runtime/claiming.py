"""The claim loop: shares the free slots between claimable batches, claims, and waits.

The loop keeps a snapshot of the claimable batches (``claimable_batches``: deadline,
owner, window, escalation, pending), refreshed when it goes stale: on NOTIFY, on the
poll interval, at a known retry time. ``ModelLimits`` says how many slots each model
has free and ``Budgets`` what its rate budgets admit; ``_allot`` has the core's
fair-share allocator turn them into ``(batch, model, n)`` allotments; one statement
claims them (claim and start are one write) and a task starts per row
(``requests.py``). A pair that gives fewer rows than allotted has nothing more due: it
is "starved" until the next refresh, and the loop allots its model's remaining slots
to the next pair at once. The loop waits when every slot is busy or every pair with
free slots is starved: until a NOTIFY, a freed slot for a model with work, the next
known retry time, or the poll interval. Database errors are logged and retried with
backoff; readiness turns false after a few in a row. The loop never dies on them.
"""

from __future__ import annotations

from uuid import UUID

import anyio
import anyio.abc

from fusillade import metrics
from fusillade.core.scheduling.fair import Claimable, allocate
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
            if self._claimable_stale:
                try:
                    batches = await self._db(self.repo.sync.claimable_batches, now=self.now())
                except (StoreError, TimeoutError) as exc:
                    backoff = await self._claim_failed(exc, backoff)
                    continue
                # the allocator orders them (escalated, window, deadline): no sort here
                self._claimable = batches
                self._claimable_stale = False
                self._claimable_at = now_loop
                self._hungry = self._models_with_work()
            allotments = self._allot(self.limits.free_slots(sorted(self._hungry), now_loop))
            if allotments:
                started = anyio.current_time()
                try:
                    claimed = await self._db(
                        self.repo.sync.claim, self.id, allotments, now=self.now()
                    )
                except (StoreError, TimeoutError) as exc:
                    backoff = await self._claim_failed(exc, backoff)
                    continue
                claimed_at = anyio.current_time()
                metrics.CLAIM_SECONDS.observe(claimed_at - started)
                self._claim_failures, backoff = 0, 0.05
                got: dict[tuple[UUID, str], int] = {}
                for req in claimed:
                    pair = (req.batch_id, req.model)
                    got[pair] = got.get(pair, 0) + 1
                    self._start_request(tg, req, claimed_at)
                starved = {(b, m) for b, m, n in allotments if got.get((b, m), 0) < n}
                self._starved |= starved
                if starved:
                    self._hungry = self._models_with_work()
                if self._stopping:
                    break
                if claimed or starved:
                    # free slots and pairs not yet starved may remain: allot again (each
                    # round claims rows or starves a pair, so this ends)
                    continue
            await self._wait_for_work()

    def _allot(self, free: dict[str, int]) -> list[tuple[UUID, str, int]]:
        """Share the free slots between the claimable (batch, model) pairs not starved:
        ``(batch_id, model, n)`` allotments for one claim.

        Per model, the slots are the fewest of its concurrency slots (``free``) and what
        its budget admits; its upstream's budget caps its models together. The core's
        fair-share allocator (``fusillade.core.scheduling.fair``) hands them out:
        weighted between owners, escalated and shorter-window batches first within an
        owner, work-conserving. A pair gets at most its pending count (what may be due).
        """
        now = anyio.current_time()
        budget_free = self.budgets.free(free, now)
        model_free = {m: min(n, budget_free[m]) for m, n in free.items()}
        model_free = {m: n for m, n in model_free.items() if n > 0}
        if self.budgets.lease_wanted:
            self._lease_now.set()
        if not model_free:
            return []
        group_of = {m: u for m in model_free if (u := self.budgets.upstream_of(m)) is not None}
        claimables = [
            Claimable(
                batch_id=b.id,
                model=m,
                owner=b.owner,
                expires_at=b.expires_at,
                window=b.window,
                escalated=b.escalated,
                in_flight=self._pair_in_flight.get((b.id, m), 0),
            )
            for b in self._claimable
            for m in b.models
            if m in model_free and (b.id, m) not in self._starved
        ]
        pending = {b.id: b.pending for b in self._claimable}
        allotted = allocate(
            claimables,
            model_free=model_free,
            group_of=group_of,
            group_free=self.budgets.group_free(model_free, now),
            weights=self.config.owner_weights,
        )
        return [(a.batch_id, a.model, min(a.count, pending[a.batch_id])) for a in allotted]

    def _models_with_work(self) -> set[str]:
        """The models of the claimable batches with a pair not starved."""
        return {m for b in self._claimable for m in b.models if (b.id, m) not in self._starved}

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
        for t in (
            self._next_due,
            self.limits.next_unpause(now_loop),
            self.budgets.next_change(now_loop),
        ):
            if t is not None:
                deadline = min(deadline, t)
        woke = False
        with anyio.move_on_after(max(0.0, deadline - now_loop)):
            await self._wake.wait()
            woke = True
        self._wake = anyio.Event()
        new_work, self._new_work = self._new_work, False
        now_loop = anyio.current_time()
        due = self._next_due is not None and self._next_due <= now_loop
        if (
            not woke
            or due
            or now_loop - self._claimable_at >= self.config.poll_interval.total_seconds()
        ):
            # Poll interval or a known due time: look at every batch again. Checked on
            # wake-ups too: a daemon busy with one batch is woken by every answer, and a
            # starved pair (its retries now due, say) must not wait for it to go idle.
            self._starved.clear()
            self._claimable_stale = True
            if due:
                self._next_due = None
        if woke and not self._stopping and not new_work:
            await anyio.sleep(_CLAIM_COALESCE)
