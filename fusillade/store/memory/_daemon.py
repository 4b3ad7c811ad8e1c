"""The daemon side in memory: claim, fenced results, release, reclaim, sweeps."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from uuid import UUID

import attrs

from fusillade import lifecycle
from fusillade.core.attempts import RESULT_FIELDS, AbortReason, AttemptResult, ClaimedRequest
from fusillade.core.batches import ClaimableBatch, window_of
from fusillade.core.models import (
    BatchRecord,
    Failure,
    FailureReason,
    RequestState,
    Usage,
)
from fusillade.core.transitions import Event, EventKind, step
from fusillade.errors import StoreError
from fusillade.store.interface import (
    Allotment,
    BudgetHolders,
    DaemonInfo,
    ReclaimStats,
    RecordStats,
    merge_allotments,
)
from fusillade.store.memory._base import MemoryBase
from fusillade.store.memory._rows import (
    _LOST_DEAD,
    _LOST_TIMED_OUT,
    _SMALLINT,
    CA,
    IN_FLIGHT,
    UNSETTLED,
    P,
    _check,
    _Daemon,
    _no_nul,
    _Row,
)


class DaemonParts(MemoryBase):
    def _claimable(self, b: BatchRecord) -> bool:
        return b.cancelling_at is None and b.expired_at is None

    def _claim_open(self, b: BatchRecord | None, now: datetime) -> bool:
        """Rows may be claimed from ``b``: the predicate of batches_claimable, and the
        deadline not passed."""
        return (
            b is not None and b.frozen_counts is None and self._claimable(b) and b.expires_at > now
        )

    def claimable_batches(self, *, now: datetime) -> list[ClaimableBatch]:
        with self._lock:
            out = []
            for b in sorted(self._batches.values(), key=lambda b: (b.expires_at, b.id)):
                if not self._claim_open(b, now):
                    continue
                c = self._counts(b)
                if c.pending == 0:
                    continue  # everything unsettled is in flight: nothing to claim
                out.append(
                    ClaimableBatch(
                        id=b.id,
                        owner=b.owner,
                        models=b.models,
                        expires_at=b.expires_at,
                        window=window_of(b.completion_window, b.created_at, b.expires_at),
                        escalated=b.escalated_at is not None,
                        pending=c.pending,
                        finished=c.completed + c.failed + c.canceled,
                        total=b.total,
                    )
                )
            return out

    def settled_batches(self, *, limit: int = 100) -> list[UUID]:
        with self._lock:
            out = []
            for b in sorted(self._batches.values(), key=lambda b: (b.expires_at, b.id)):
                if b.frozen_counts is None and self._counts(b).unsettled == 0:
                    out.append(b.id)
            return out[:limit]

    def set_escalation(
        self, *, escalate: Sequence[UUID], clear: Sequence[UUID], now: datetime
    ) -> None:
        with self._lock:
            up = set(escalate)
            for batch_id in up | set(clear):
                b = self._batches.get(batch_id)
                if b is None:
                    continue
                if batch_id in up and b.escalated_at is None:
                    self._batches[batch_id] = attrs.evolve(b, escalated_at=now)
                elif batch_id not in up and b.escalated_at is not None:
                    self._batches[batch_id] = attrs.evolve(b, escalated_at=None)

    def claim(
        self, daemon_id: UUID, allotments: Sequence[Allotment], *, now: datetime
    ) -> list[ClaimedRequest]:
        """Claim and start at most ``n`` due requests per ``(batch, model, n)``, as
        claim.sql takes them: only from batches still claimable; per pair, at most ``n``
        rows not yet attempted in their budget, by line, and at most ``n`` due rows
        attempted before, earliest due first, merged by line."""
        wanted = merge_allotments(allotments)
        if not wanted:
            return []
        with self._lock:
            # the due pending rows of each pair, in one pass over the pending rows
            due: dict[tuple[UUID, str], list[_Row]] = {}
            for rid in self._by_state[P]:
                row = self._rows[rid]
                pair = (row.req.batch_id, row.model)
                if pair in wanted and row.req.not_before <= now:
                    due.setdefault(pair, []).append(row)
            picked: list[_Row] = []
            for pair, n in wanted.items():
                if not self._claim_open(self._batches.get(pair[0]), now):
                    continue
                rows = due.get(pair, [])
                fresh = sorted(
                    (r for r in rows if r.req.attempts == r.req.budget_base),
                    key=lambda r: r.line_number,
                )[:n]
                again = sorted(
                    (r for r in rows if r.req.attempts != r.req.budget_base),
                    key=lambda r: (r.req.not_before, r.line_number),
                )[:n]
                picked += sorted(fresh + again, key=lambda r: r.line_number)[:n]
            out = []
            for row in picked:
                req = step(row.req, Event(EventKind.CLAIM, daemon_id=daemon_id), now).request
                req = step(req, Event(EventKind.START, attempt=req.attempts), now).request
                self._put(attrs.evolve(row, req=req))
                t = self._templates[row.file_id][row.line_number - 1]
                out.append(
                    ClaimedRequest(
                        id=req.id,
                        batch_id=req.batch_id,
                        attempt=req.attempts,
                        budget_used=req.budget_used,
                        model=row.model,
                        batch_expires_at=row.batch_expires_at,
                        custom_id=t.custom_id,
                        endpoint=t.endpoint,
                        method=t.method,
                        path=t.path,
                        body=t.body,
                        daemon_id=daemon_id,
                        claimed_at=now,
                        started_at=now,
                        not_before=req.not_before,
                        api_key=t.api_key,
                    )
                )
            return out

    def _apply_result(self, row: _Row, daemon_id: UUID, result: AttemptResult) -> _Row | None:
        """The row after ``result``, or ``None`` when the fence refuses it (a lost race):
        record_results.sql's compare-and-set of the values the core computed."""
        r, claimed = row.req, result.claimed
        fenced = (r.daemon_id, r.attempts, r.started_at) != (
            daemon_id,
            claimed.attempt,
            claimed.started_at,
        )
        if fenced or r.state not in result.sources:
            return None
        new = result.request
        return attrs.evolve(
            row,
            req=attrs.evolve(r, **{f: getattr(new, f) for f in RESULT_FIELDS}),
            input_tokens=result.input_tokens,
            output_tokens=result.output_tokens,
            body_is_json=result.body_is_json,
            body_raw=result.body_raw,
        )

    def record_results(self, daemon_id: UUID, results: Sequence[AttemptResult]) -> RecordStats:
        """Write many attempt results at once; fenced ones count as lost.

        A success that replaces ``canceled`` repairs its batch's frozen counts and usage.
        Raises ``StoreError`` (writing nothing) when a result breaks a table constraint.
        """
        with self._lock:
            staged: dict[UUID, tuple[_Row, _Row]] = {}
            for result in results:
                # The statement casts and stores every input, fenced or not.
                req = result.request
                _no_nul(req.response_body, req.failure.message if req.failure else None)
                if req.response_status is not None and req.response_status not in _SMALLINT:
                    raise StoreError(f"database error: status {req.response_status} out of range")
            for result in results:
                row = self._rows.get(result.request_id)
                if row is None:
                    continue
                new = self._apply_result(row, daemon_id, result)
                if new is not None:
                    _check(new)
                    staged[result.request_id] = (row, new)
            for old, new in staged.values():
                if new.req.state is RequestState.COMPLETED:
                    self._result_seq += 1
                    new = attrs.evolve(new, result_seq=self._result_seq)
                self._put(new)
                b = self._batches[new.req.batch_id]
                if old.req.state is CA and b.frozen_counts is not None and b.usage is not None:
                    c, u = b.frozen_counts, b.usage
                    tin, tout = new.input_tokens or 0, new.output_tokens or 0
                    self._batches[b.id] = attrs.evolve(
                        b,
                        frozen_counts=attrs.evolve(
                            c, completed=c.completed + 1, canceled=c.canceled - 1
                        ),
                        usage=Usage(
                            u.input_tokens + tin,
                            u.output_tokens + tout,
                            u.total_tokens + tin + tout,
                        ),
                    )
        lost = tuple(r.request_id for r in results if r.request_id not in staged)
        return RecordStats(written=len(staged), lost=lost)

    def release(
        self, daemon_id: UUID, *, now: datetime, request_ids: Sequence[UUID] | None = None
    ) -> int:
        """Hand this daemon's in-flight rows back to pending, the attempt refunded."""
        wanted = set(request_ids) if request_ids is not None else None
        with self._lock:
            victims = [
                self._rows[rid]
                for s in IN_FLIGHT
                for rid in self._by_state[s]
                if self._rows[rid].req.daemon_id == daemon_id and (wanted is None or rid in wanted)
            ]
            for row in victims:
                self._put(
                    attrs.evolve(row, req=step(row.req, Event(EventKind.RELEASE), now).request)
                )
            return len(victims)

    def _reclaim(
        self, victims: list[_Row], now: datetime, max_attempts: int, message: str, limit: int
    ) -> ReclaimStats:
        """In-flight rows go back to pending (the attempt stays used), or end failed
        (reason lost) when their budget is spent."""
        requeued = failed = 0
        victims.sort(key=lambda r: (r.req.claimed_at or now, r.req.id))
        for row in victims[:limit]:
            spent = row.req.budget_used >= max_attempts
            # Claim and start are one write here, so in-flight rows are processing and
            # FAIL applies. The lost attempt reported nothing: the row keeps the status
            # and body it holds (as reclaim_*.sql leaves them), and the reason is lost.
            kind = EventKind.FAIL if spent else EventKind.RECLAIM
            lost = Event(
                kind,
                status=row.req.response_status,
                body=row.req.response_body,
                failure=Failure(FailureReason.LOST, message),
            )
            req = step(row.req, lost, now).request
            self._put(attrs.evolve(row, req=req))
            failed += spent
            requeued += not spent
        return ReclaimStats(requeued=requeued, failed=failed)

    def _in_flight(self) -> Iterator[_Row]:
        for s in IN_FLIGHT:
            for rid in self._by_state[s]:
                yield self._rows[rid]

    def reclaim_dead(
        self, *, now: datetime, stale_before: datetime, max_attempts: int, limit: int = 1000
    ) -> ReclaimStats:
        """Reclaim rows of daemons not running or silent since ``stale_before``, and mark
        the silent running ones dead."""
        with self._lock:
            dead = {
                d.info.id
                for d in self._daemons.values()
                if d.status != "running" or d.heartbeat_at < stale_before
            }
            victims = [r for r in self._in_flight() if r.req.daemon_id in dead]
            for d in list(self._daemons.values()):
                if d.status == "running" and d.heartbeat_at < stale_before:
                    self._daemons[d.info.id] = attrs.evolve(d, status="dead", stopped_at=now)
            return self._reclaim(victims, now, max_attempts, _LOST_DEAD, limit)

    def reclaim_timed_out(
        self, *, now: datetime, claimed_before: datetime, max_attempts: int, limit: int = 1000
    ) -> ReclaimStats:
        with self._lock:
            victims = [
                r
                for r in self._in_flight()
                if r.req.claimed_at is not None and r.req.claimed_at < claimed_before
            ]
            return self._reclaim(victims, now, max_attempts, _LOST_TIMED_OUT, limit)

    def batches_to_abort(
        self, batch_ids: Sequence[UUID], *, now: datetime
    ) -> dict[UUID, AbortReason]:
        with self._lock:
            out: dict[UUID, AbortReason] = {}
            for batch_id in batch_ids:
                b = self._batches.get(batch_id)
                if b is None:
                    continue
                if b.cancelling_at is not None:
                    out[b.id] = AbortReason.CANCELLED
                elif b.expired_at is not None or b.expires_at <= now:
                    out[b.id] = AbortReason.EXPIRED
            return out

    def resume_creation(self, *, now: datetime, stale_before: datetime) -> int:
        """0: in memory a batch and all its requests are created at once."""
        return 0

    def sweep(self, *, now: datetime, limit: int = 5000) -> int:
        """Stamp expired batches, then cancel a bounded chunk of pending rows of cancelled
        and of expired batches. Returns the rows changed."""
        with self._lock:
            for b in list(self._batches.values()):
                if (
                    b.frozen_counts is None
                    and self._claimable(b)
                    and b.expires_at <= now
                    and any(r.req.state in UNSETTLED for r in self._rows_of(b.id))
                ):
                    self._batches[b.id] = attrs.evolve(b, expired_at=b.expires_at)
                    lifecycle.expired(b.id, b.owner)
            swept = self._sweep_pending(
                EventKind.CANCEL, now, limit, lambda b: b.cancelling_at is not None
            )
            swept += self._sweep_pending(
                EventKind.EXPIRE, now, limit, lambda b: b.expired_at is not None
            )
            return swept

    def register_daemon(self, info: DaemonInfo, *, now: datetime) -> None:
        with self._lock:
            d = self._daemons.get(info.id)
            if d is None:
                self._daemons[info.id] = _Daemon(info, "running", now, now)
            else:
                self._daemons[info.id] = attrs.evolve(
                    d, status="running", heartbeat_at=now, stopped_at=None
                )

    def heartbeat(self, daemon_id: UUID, *, now: datetime) -> bool:
        """Refresh the heartbeat; False when the daemon was declared dead meanwhile."""
        with self._lock:
            d = self._daemons.get(daemon_id)
            if d is None or d.status != "running":
                return False
            self._daemons[daemon_id] = attrs.evolve(d, heartbeat_at=now)
            return True

    def stop_daemon(self, daemon_id: UUID, *, now: datetime) -> None:
        with self._lock:
            d = self._daemons.get(daemon_id)
            if d is not None:
                self._daemons[daemon_id] = attrs.evolve(d, status="stopped", stopped_at=now)
            for key in [k for k in self._leases if k[1] == daemon_id]:
                del self._leases[key]

    def lease_budgets(
        self, daemon_id: UUID, scopes: Sequence[str], *, now: datetime, stale_before: datetime
    ) -> dict[str, BudgetHolders]:
        wanted = set(scopes)
        with self._lock:

            def live(holder: UUID) -> bool:
                d = self._daemons.get(holder)
                if d is None or d.status != "running":
                    return False
                return holder == daemon_id or d.heartbeat_at >= stale_before

            for scope in wanted:
                self._leases.setdefault((scope, daemon_id), now)
            for key in list(self._leases):
                scope, holder = key
                if (holder == daemon_id and scope not in wanted) or not live(holder):
                    del self._leases[key]
            holders: dict[str, int] = {}
            for scope, _ in self._leases:
                if scope in wanted:
                    holders[scope] = holders.get(scope, 0) + 1
            return {
                scope: BudgetHolders(n, self._leases[(scope, daemon_id)])
                for scope, n in holders.items()
                if (scope, daemon_id) in self._leases
            }
