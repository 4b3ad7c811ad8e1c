"""Request tasks: one per claimed request, from the send to the recorded result.

Each task sends its request (``Dispatcher``), frees its model slot, and has the core
decide what the attempt came to: classified, retried or given up
(``fusillade.core.retry``), and the request's new state and fields computed by the
state table (``ClaimedRequest.result``). An attempt aborted by the cancel watcher is
recorded the same way, as cancelled or expired; one aborted at shutdown has no result
(its row is released). The result goes to the writer, which acknowledges it after
commit (exactly once: every write is a compare-and-set under owner and attempt).
"""

from __future__ import annotations

from datetime import datetime

import anyio
import anyio.abc

from fusillade import metrics
from fusillade.core.attempts import AttemptResult, ClaimedRequest, ResultKind
from fusillade.core.retry import GiveUp, HttpResponse, RetryAt, Success, classify, decide
from fusillade.core.scheduling.tokens import used_tokens
from fusillade.runtime._base import InFlight
from fusillade.runtime.budgets import Reservation
from fusillade.runtime.dispatch import Sent
from fusillade.runtime.upstream_trouble import TroubleReports


class RequestTasks(TroubleReports):
    def _start_request(self, tg: anyio.abc.TaskGroup, req: ClaimedRequest, now: float) -> None:
        """Start sending ``req``, claimed at loop time ``now``."""
        entry = InFlight(req, metrics.model_series(self.config.metric_label(req.model)))
        self._in_flight[req.id] = entry
        self._batch_in_flight[req.batch_id] = self._batch_in_flight.get(req.batch_id, 0) + 1
        pair = (req.batch_id, req.model)
        self._pair_in_flight[pair] = self._pair_in_flight.get(pair, 0) + 1
        self.limits.acquire_nowait(req.model)
        self.budgets.start(req.model, now)
        entry.series.claimed.inc()
        entry.series.in_flight.inc()
        if self._tasks_done.is_set():
            self._tasks_done = anyio.Event()
        tg.start_soon(self._run_request, entry)

    def _finish_request(self, entry: InFlight) -> None:
        req = entry.request
        del self._in_flight[req.id]
        left = self._batch_in_flight[req.batch_id] - 1
        if left:
            self._batch_in_flight[req.batch_id] = left
        else:
            del self._batch_in_flight[req.batch_id]  # nothing kept for finished batches
        pair = (req.batch_id, req.model)
        left = self._pair_in_flight[pair] - 1
        if left:
            self._pair_in_flight[pair] = left
        else:
            del self._pair_in_flight[pair]
        self.limits.release(req.model)
        entry.series.in_flight.dec()
        if not self._in_flight:
            self._tasks_done.set()
        if self._claimable_stale or req.model in self._hungry:
            self._wake.set()  # a slot freed for a model with work

    async def _run_request(self, entry: InFlight) -> None:
        req = entry.request
        started = anyio.current_time()
        sent: Sent | None = None
        reservation = self.budgets.estimate(req.model, req.body)
        reserved = False
        try:
            with entry.scope:
                await self._reserve_tokens(reservation)
                reserved = True
                sent = await self.dispatcher.send(req)
        finally:
            # one reading of the clocks for what follows (each costs a backend lookup)
            ended = anyio.current_time()
            now = self.at(ended)
            self._finish_request(entry)
            self._settle(reservation, reserved, sent, ended, now)
        entry.series.upstream_seconds.observe(ended - started)
        if sent is None:  # aborted
            if entry.abort is None or entry.released:
                return  # released at shutdown, without a result
            metrics.CANCELED.labels(entry.abort.value).inc()
            result = req.result(entry.abort.kind, now)
        else:
            result = self._result_of(req, sent, entry.series, now)
        written = await self.writer.submit(result)
        if written and result.kind is ResultKind.RETRY:
            assert self._clock is not None
            due = self._clock.loop_time_at(result.request.not_before)
            self._next_due = due if self._next_due is None else min(self._next_due, due)
            self._wake.set()

    async def _reserve_tokens(self, reservation: Reservation) -> None:
        """Wait until the request's estimated tokens fit its token budgets, and take them."""
        while True:
            now = anyio.current_time()
            if self.budgets.reserve(reservation, now):
                return
            # until the bucket has refilled enough, or a settled request gave tokens back
            with anyio.move_on_after(self.budgets.reserve_wait(reservation, now)):
                await self._tokens_returned.wait()

    def _settle(
        self,
        reservation: Reservation,
        reserved: bool,
        sent: Sent | None,
        now: float,
        wall_clock: datetime,
    ) -> None:
        """Give the budgets the answer (at loop time ``now``, ``wall_clock`` the
        database's time then): tokens actually used, rate-limit headers, a 429."""
        response = (
            sent.outcome if sent is not None and isinstance(sent.outcome, HttpResponse) else None
        )
        used = used_tokens(sent.input_tokens, sent.output_tokens) if sent is not None else None
        # a new event only when a request waits on this one (most settle with none)
        if self._tokens_returned.statistics().tasks_waiting:
            self._tokens_returned.set()
            self._tokens_returned = anyio.Event()
        self.budgets.finish(
            reservation,
            now,
            reserved=reserved,
            used=used,
            response=response,
            wall_clock=wall_clock,
        )

    def _result_of(
        self, req: ClaimedRequest, sent: Sent, series: metrics.ModelSeries, now: datetime
    ) -> AttemptResult:
        """What the attempt came to at ``now``, decided by the core: classified, retried
        or given up (``fusillade.core.retry``), and the request's new state and fields
        (``ClaimedRequest.result``, the state table)."""
        self._note_outcome(req.model, sent.outcome)
        verdict = classify(sent.outcome, self.config.retry)
        if isinstance(verdict, Success):
            series.completed(verdict.response.status).inc()
            return req.result(
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
            metrics.RETRIED.labels(series.label, failure.reason.value).inc()
            return req.result(
                ResultKind.RETRY,
                now,
                status=status,
                body=body,
                failure=failure,
                not_before=decision.not_before,
                body_raw=body_raw,
            )
        assert isinstance(decision, GiveUp)
        metrics.FAILED.labels(series.label, failure.reason.value).inc()
        return req.result(
            ResultKind.FAILED, now, status=status, body=body, failure=failure, body_raw=body_raw
        )
