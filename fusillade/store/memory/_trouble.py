"""What holds a batch back and what went wrong in it, as the SQL of postgres/_trouble.py
reads it (the same bounds, orders and ties)."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from uuid import UUID

import attrs

from fusillade.core.models import FailureReason, RequestState
from fusillade.core.trouble import BODY_PREFIX, BatchTrouble, ErrorKind, ErrorKinds, ErrorSample
from fusillade.store.memory._base import MemoryBase
from fusillade.store.memory._rows import CA, P, _Row

_RECENT_ERRORS = 1000  # as postgres/_trouble.py
_FA = RequestState.FAILED


def _sample(row: _Row) -> ErrorSample | None:
    r = row.req
    if r.failure is None:
        return None
    body = r.response_body[:BODY_PREFIX] if r.response_body is not None else None
    return ErrorSample(r.failure.reason, r.response_status, r.failure.message, body)


def _kind(row: _Row) -> tuple[FailureReason, int | None]:
    assert row.req.failure is not None  # failed and canceled rows have one
    reason = row.req.failure.reason
    return reason, row.req.response_status if reason is FailureReason.HTTP_STATUS else None


class TroubleParts(MemoryBase):
    def _latest_errors(self, batch_id: UUID, limit: int) -> list[_Row]:
        """The batch's failed and canceled rows, latest first (requests_errors backwards)."""
        rows = [r for r in self._rows_of(batch_id) if r.req.state in (_FA, CA)]
        rows.sort(key=lambda r: (r.req.finished_at, r.line_number), reverse=True)
        return rows[:limit]

    def batch_trouble(
        self, owner: str | None, batch_id: UUID, *, now: datetime, cap: int = 10_000
    ) -> BatchTrouble:
        with self._lock:
            self._batch(owner, batch_id)
            retries = [
                r
                for r in self._rows_of(batch_id)
                if r.req.state is P and r.req.attempts > r.req.budget_base
            ]
            waiting = [r for r in retries if r.req.not_before > now][:cap]
            last_retry = max(retries, key=lambda r: (r.req.not_before, r.line_number), default=None)
            failures = [
                r for r in self._latest_errors(batch_id, _RECENT_ERRORS) if r.req.state is _FA
            ]
            return BatchTrouble(
                retries_waiting=len(waiting),
                rate_limited=sum(1 for r in waiting if r.req.response_status == 429),
                capped=len(waiting) >= cap,
                latest_retry=_sample(last_retry) if last_retry is not None else None,
                latest_failure=_sample(failures[0]) if failures else None,
            )

    def error_kinds(
        self, owner: str | None, batch_id: UUID, *, top: int = 5, scan: int = 1_000_000
    ) -> ErrorKinds:
        with self._lock:
            self._batch(owner, batch_id)
            latest = self._latest_errors(batch_id, scan)
            counts = Counter(_kind(r) for r in latest)
            examples: dict[tuple[FailureReason, int | None], _Row] = {}
            for row in latest:  # latest first: the first of each kind is its example
                examples.setdefault(_kind(row), row)
        ranked = sorted(
            counts.items(),
            key=lambda kv: (-kv[1], kv[0][0].value, kv[0][1] is not None, kv[0][1] or 0),
        )
        kinds = []
        for (reason, status), n in ranked[:top]:
            example = _sample(examples[reason, status])
            assert example is not None
            kinds.append(ErrorKind(attrs.evolve(example, status=status), n))
        return ErrorKinds(tuple(kinds), len(latest), capped=len(latest) >= scan)

    def live_daemons(self, *, stale_before: datetime) -> int:
        with self._lock:
            return sum(
                1
                for d in self._daemons.values()
                if d.status == "running" and d.heartbeat_at >= stale_before
            )
