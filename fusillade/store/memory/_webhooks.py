"""The webhook outbox in memory: the statements of ``store/postgres/_webhooks.py`` on the
``_events`` table that the freeze writes (``_base.MemoryBase._insert_event``)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from uuid import UUID

import attrs

from fusillade.core.webhooks import WebhookEvent
from fusillade.store.memory._base import MemoryBase

_NO_WEBHOOK = "not sent: no webhook configured for the owner"


class WebhookParts(MemoryBase):
    def claim_webhook_events(
        self,
        daemon_id: UUID,
        owners: Sequence[str],
        *,
        now: datetime,
        lease_until: datetime,
        limit: int = 10,
    ) -> list[WebhookEvent]:
        with self._lock:
            due = sorted(
                (
                    e
                    for e in self._events.values()
                    if e.pending and e.next_attempt_at <= now and e.event.owner in owners
                ),
                key=lambda e: e.next_attempt_at,
            )[:limit]
            for row in due:
                row.event = attrs.evolve(row.event, attempts=row.event.attempts + 1)
                row.claimed_by = daemon_id
                row.next_attempt_at = lease_until
            return sorted((row.event for row in due), key=lambda e: e.id)

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
        with self._lock:
            row = self._events.get(event.id)
            if row is None or row.delivered_at is not None:
                return False
            if delivered_at is None and (
                row.given_up_at is not None
                or row.claimed_by != daemon_id
                or row.event.attempts != event.attempts
            ):
                return False
            row.delivered_at = delivered_at
            row.given_up_at = given_up_at if delivered_at is None else None
            if next_attempt_at is not None:
                row.next_attempt_at = next_attempt_at
            if error is not None:
                row.last_error = error
            row.claimed_by = None
            return True

    def give_up_webhook_events(
        self, *, now: datetime, created_before: datetime, limit: int = 1000
    ) -> int:
        with self._lock:
            stale = [
                e
                for e in self._events.values()
                if e.pending and e.next_attempt_at <= now and e.event.created_at < created_before
            ][:limit]
            for row in stale:
                row.given_up_at = now
                row.last_error = row.last_error or _NO_WEBHOOK
                row.claimed_by = None
            return len(stale)

    def webhook_outbox_pending(self, owners: Sequence[str]) -> int:
        with self._lock:
            return sum(1 for e in self._events.values() if e.pending and e.event.owner in owners)
