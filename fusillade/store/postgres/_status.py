"""The status page's reads: recent batches, model activity, recent failures."""

from __future__ import annotations

from datetime import datetime

from fusillade import lifecycle
from fusillade.core.models import BatchRecord, BatchView, FailureReason
from fusillade.serde import structure
from fusillade.store.interface import (
    ModelActivity,
    RecentFailure,
    StatusSnapshot,
    status_batch_ids,
)
from fusillade.store.postgres._batches import BatchQueries


class StatusQueries(BatchQueries):
    def status(
        self,
        owner: str | None,
        *,
        now: datetime,
        since: datetime,
        batches: int = 20,
        failures: int = 20,
    ) -> StatusSnapshot:
        frozen: list[BatchView] = []
        with self._tx() as cur:
            rows = cur.execute(self.q.status_batches, {"owner": owner, "limit": batches}).fetchall()
            records = [structure(r, BatchRecord) for r in rows]
            views = self._views(cur, records, owner, now, frozen)
            active = status_batch_ids(views, since)
            models = [
                ModelActivity(r["model"], r["in_flight"], r["completed"], r["failed"])
                for r in cur.execute(
                    self.q.status_models, {"batch_ids": active, "since": since}
                ).fetchall()
            ]
            shown = [v.record.id for v in views]
            failed = [
                RecentFailure(
                    request_id=r["id"],
                    batch_id=r["batch_id"],
                    model=r["model"],
                    finished_at=r["finished_at"],
                    response_status=r["response_status"],
                    reason=FailureReason(r["failure_reason"]),
                    message=r["failure_message"],
                )
                for r in cur.execute(
                    self.q.status_failures, {"batch_ids": shown, "limit": failures}
                ).fetchall()
            ]
        for done in frozen:
            lifecycle.finished(done, now)
        return StatusSnapshot(now, tuple(views), tuple(models), tuple(failed))
