"""The status page's reads in memory, as ``status_*.sql`` answers them."""

from __future__ import annotations

from collections import Counter
from datetime import datetime

from fusillade.core.models import RequestState
from fusillade.store.interface import (
    STATUS_MESSAGE_CHARS,
    ModelActivity,
    RecentFailure,
    StatusSnapshot,
    status_batch_ids,
)
from fusillade.store.memory._base import MemoryBase
from fusillade.store.memory._rows import IN_FLIGHT


class StatusParts(MemoryBase):
    def status(
        self,
        owner: str | None,
        *,
        now: datetime,
        since: datetime,
        batches: int = 20,
        failures: int = 20,
    ) -> StatusSnapshot:
        with self._lock:
            mine = sorted(
                (b for b in self._batches.values() if owner is None or b.owner == owner),
                key=lambda b: b.id,
                reverse=True,
            )
            unfinished = [b for b in mine if b.frozen_counts is None][:batches]
            finished = [b for b in mine if b.frozen_counts is not None][:batches]
            records = sorted(unfinished + finished, key=lambda b: b.id, reverse=True)
            views = tuple(self._view(b, now) for b in records)
            counts: dict[str, Counter[str]] = {}
            for batch_id in status_batch_ids(views, since):
                for row in self._rows_of(batch_id):
                    r = row.req
                    recent = r.finished_at is not None and r.finished_at >= since
                    if r.state in IN_FLIGHT:
                        kind = "in_flight"
                    elif recent and r.state is RequestState.COMPLETED:
                        kind = "completed"
                    elif recent and r.state is RequestState.FAILED:
                        kind = "failed"
                    else:
                        continue
                    counts.setdefault(row.model, Counter())[kind] += 1
            models = tuple(
                ModelActivity(m, c["in_flight"], c["completed"], c["failed"])
                for m, c in sorted(counts.items())
            )
            failed = []
            for view in views:
                for row in self._rows_of(view.record.id):
                    r = row.req
                    if r.state is RequestState.FAILED:
                        assert r.finished_at is not None
                        assert r.failure is not None
                        failed.append(
                            RecentFailure(
                                request_id=r.id,
                                batch_id=r.batch_id,
                                model=row.model,
                                finished_at=r.finished_at,
                                response_status=r.response_status,
                                reason=r.failure.reason,
                                message=r.failure.message[:STATUS_MESSAGE_CHARS],
                            )
                        )
            failed.sort(key=lambda f: (f.finished_at, f.request_id), reverse=True)
        return StatusSnapshot(now, views, models, tuple(failed[:failures]))
