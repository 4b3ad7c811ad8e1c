"""The webhook outbox: claim due events under a lease, settle each send, give up the
events nobody sends, count what is pending (docs/webhooks.md). Events are written by
the freeze (``_batches.py``)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from uuid import UUID

from fusillade.core.webhooks import WebhookEvent
from fusillade.store.postgres._base import PostgresBase


class WebhookQueries(PostgresBase):
    def claim_webhook_events(
        self,
        daemon_id: UUID,
        owners: Sequence[str],
        *,
        now: datetime,
        lease_until: datetime,
        limit: int = 10,
    ) -> list[WebhookEvent]:
        if not owners:
            return []
        with self._tx() as cur:
            rows = cur.execute(
                self.q.claim_webhook_events,
                {
                    "daemon_id": daemon_id,
                    "owners": list(owners),
                    "now": now,
                    "lease_until": lease_until,
                    "limit": limit,
                },
            ).fetchall()
        events = [
            WebhookEvent(
                r["id"], r["owner"], r["type"], r["batch_id"], r["created_at"], r["attempts"]
            )
            for r in rows
        ]
        return sorted(events, key=lambda e: e.id)

    def settle_webhook_event(
        self,
        daemon_id: UUID,
        event: WebhookEvent,
        *,
        delivered_at: datetime | None = None,
        next_attempt_at: datetime | None = None,
        given_up_at: datetime | None = None,
        error: str | None = None,
    ) -> bool:
        with self._tx() as cur:
            row = cur.execute(
                self.q.settle_webhook_event,
                {
                    "id": event.id,
                    "daemon_id": daemon_id,
                    "attempts": event.attempts,
                    "delivered_at": delivered_at,
                    "next_attempt_at": next_attempt_at,
                    "given_up_at": given_up_at,
                    "error": error,
                },
            ).fetchone()
        return row is not None

    def give_up_webhook_events(
        self, *, now: datetime, created_before: datetime, limit: int = 1000
    ) -> int:
        with self._tx() as cur:
            rows = cur.execute(
                self.q.give_up_webhook_events,
                {"now": now, "created_before": created_before, "limit": limit},
            ).fetchall()
        return len(rows)

    def webhook_outbox_pending(self, owners: Sequence[str]) -> int:
        if not owners:
            return 0
        with self._tx() as cur:
            row = cur.execute(self.q.count_webhook_outbox, {"owners": list(owners)}).fetchone()
        return int(row["n"]) if row else 0
