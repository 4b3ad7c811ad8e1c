"""The in-memory tables, their lock and the helpers every part uses."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Self
from uuid import UUID

import attrs

from fusillade import lifecycle
from fusillade.core.batches import count_states, derive, freeze, needs_freeze
from fusillade.core.idempotency import (
    MAX_KEY_CHARS,
    IdempotencyKey,
    check_replay,
    expired_before,
)
from fusillade.core.models import (
    BatchRecord,
    BatchView,
    RequestCounts,
    RequestState,
    RequestTemplate,
    Usage,
)
from fusillade.core.transitions import Event, EventKind, step
from fusillade.core.webhooks import WebhookEvent, event_type
from fusillade.errors import NotFound, StoreError
from fusillade.ids import next_uuid7
from fusillade.store.interface import RequestSummary
from fusillade.store.memory._rows import P, _Daemon, _Event, _File, _Key, _no_nul, _Row


class MemoryBase:
    """The tables and the lock; the repository's parts are its subclasses."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._files: dict[UUID, _File] = {}
        self._templates: dict[UUID, list[RequestTemplate]] = {}
        self._batches: dict[UUID, BatchRecord] = {}
        self._rows: dict[UUID, _Row] = {}
        self._result_seq = 1  # the last position given to a completed result (result_seq)
        self._batch_rows: dict[UUID, list[UUID]] = {}  # in line order
        self._by_state: dict[RequestState, set[UUID]] = {s: set() for s in RequestState}
        self._daemons: dict[UUID, _Daemon] = {}
        # budget leases: (scope, daemon id) -> since
        self._leases: dict[tuple[str, UUID], datetime] = {}
        # idempotency keys: (owner, key) -> the request's fingerprint and object
        self._keys: dict[tuple[str, str], _Key] = {}
        # the webhook outbox, and its (batch, version) -> event id uniqueness
        self._events: dict[UUID, _Event] = {}
        self._event_of: dict[tuple[UUID, int], UUID] = {}
        # retention (0013): batches' output expiry, and what the purge has removed
        self._output_expires: dict[UUID, datetime] = {}
        self._purged_batches: set[UUID] = set()
        self._purged_files: set[UUID] = set()

    # Parity with PostgresRepository, so either can be used as a context manager.
    def open(self, *, wait: bool = True, timeout: float = 30.0) -> None:
        pass

    def close(self) -> None:
        pass

    def ping(self, timeout: float = 5.0) -> None:
        pass

    def database_time(self) -> datetime | None:
        """None: everything lives in this process, whose clock callers already use."""
        return None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def _new_id(self) -> UUID:
        """A new id from the process's one uuid7 sequence (``fusillade.ids``): greater
        than every earlier one, so id order is creation order, as in PostgreSQL."""
        return next_uuid7()

    def _put(self, row: _Row) -> None:
        old = self._rows.get(row.req.id)
        if old is not None:
            self._by_state[old.req.state].discard(row.req.id)
        self._rows[row.req.id] = row
        self._by_state[row.req.state].add(row.req.id)

    def _replay_of(
        self, owner: str, idempotency: IdempotencyKey | None, now: datetime
    ) -> UUID | None:
        """The object a live key of ``owner`` created (``None``: no live key); call with
        the lock held, then ``_remember`` the key once the object is made.

        Raises:
            Conflict: the key is live for a different request.
        """
        if idempotency is None:
            return None
        # the table's constraints, checked before anything is written
        _no_nul(owner, idempotency.key, idempotency.fingerprint)
        if not 1 <= len(idempotency.key) <= MAX_KEY_CHARS:
            raise StoreError("database error: idempotency key length out of range")
        stored = self._keys.get((owner, idempotency.key))
        if stored is None or stored.created_at < expired_before(now):
            return None
        check_replay(idempotency, stored.fingerprint)
        return stored.object_id

    def _remember(
        self, owner: str, idempotency: IdempotencyKey | None, object_id: UUID, now: datetime
    ) -> None:
        if idempotency is not None:
            self._keys[owner, idempotency.key] = _Key(idempotency.fingerprint, object_id, now)

    def forget_idempotency_keys(self, *, now: datetime, limit: int = 1000) -> int:
        """Delete at most ``limit`` keys older than the TTL (oldest first); how many."""
        with self._lock:
            before = expired_before(now)
            old = sorted(
                (k for k, v in self._keys.items() if v.created_at < before),
                key=lambda k: self._keys[k].created_at,
            )[:limit]
            for k in old:
                del self._keys[k]
        return len(old)

    def _live_file(self, owner: str, file_id: UUID) -> _File | None:
        f = self._files.get(file_id)
        if f is None or f.record.owner != owner or f.deleted_at is not None:
            return None
        return f

    def _batch(self, owner: str | None, batch_id: UUID) -> BatchRecord:
        record = self._batches.get(batch_id)
        if record is None or (owner is not None and record.owner != owner):
            raise NotFound("batch", batch_id)
        return record

    def _rows_of(self, batch_id: UUID) -> Iterator[_Row]:
        for rid in self._batch_rows.get(batch_id, ()):
            yield self._rows[rid]

    def _counts(self, record: BatchRecord) -> RequestCounts:
        return attrs.evolve(
            count_states(r.req.state for r in self._rows_of(record.id)), total=record.total
        )

    def _view(self, record: BatchRecord, now: datetime) -> BatchView:
        """Derive the view, freezing (once) a batch whose requests are all settled."""
        view = derive(record, record.frozen_counts or self._counts(record), now)
        if not needs_freeze(view):
            return view
        rows = list(self._rows_of(record.id))
        done = [r for r in rows if r.req.state is RequestState.COMPLETED]
        finished = [r.req.finished_at for r in rows if r.req.finished_at is not None]
        try:
            frozen = freeze(
                record, count_states(r.req.state for r in rows), max(finished, default=None)
            )
        except ValueError:  # freeze_batch.sql's "nothing unsettled, sums to total" guard
            return view
        tokens_in = sum(r.input_tokens or 0 for r in done)
        tokens_out = sum(r.output_tokens or 0 for r in done)
        frozen = attrs.evolve(frozen, usage=Usage(tokens_in, tokens_out, tokens_in + tokens_out))
        self._batches[record.id] = frozen
        assert frozen.frozen_counts is not None
        view = derive(frozen, frozen.frozen_counts, now)
        lifecycle.finished(view, now)
        self._insert_event(view, now)
        return view

    def _insert_event(self, view: BatchView, now: datetime) -> None:
        """insert_webhook_event.sql: the event of a batch just frozen, once per version."""
        kind = event_type(view.status)
        key = (view.record.id, view.record.version)
        if kind is None or key in self._event_of:
            return
        event = WebhookEvent(next_uuid7(), view.record.owner, kind, view.record.id, now)
        self._events[event.id] = _Event(event, next_attempt_at=now)
        self._event_of[key] = event.id

    def _request_of(self, owner: str | None, request_id: UUID) -> tuple[_Row, RequestTemplate]:
        row = self._rows.get(request_id)
        if row is None:
            raise NotFound("request", request_id)
        if owner is not None and self._batches[row.req.batch_id].owner != owner:
            raise NotFound("request", request_id)
        return row, self._templates[row.file_id][row.line_number - 1]

    def _summary(self, row: _Row) -> RequestSummary:
        r = row.req
        t = self._templates[row.file_id][row.line_number - 1]
        return RequestSummary(
            id=r.id,
            batch_id=r.batch_id,
            custom_id=t.custom_id,
            model=row.model,
            state=r.state,
            attempts=r.attempts,
            line_number=row.line_number,
            response_status=r.response_status,
            failure_reason=r.failure.reason if r.failure else None,
            failure_message=r.failure.message if r.failure else None,
            claimed_at=r.claimed_at,
            finished_at=r.finished_at,
        )

    def _sweep_pending(
        self,
        event: EventKind,
        now: datetime,
        limit: int,
        picks: Callable[[BatchRecord], bool],
    ) -> int:
        """Pending rows of unfrozen batches that ``picks`` accepts go ``canceled``."""
        victims = []
        for rid in self._by_state[P]:
            row = self._rows[rid]
            b = self._batches[row.req.batch_id]
            if b.frozen_counts is None and picks(b):
                victims.append(row)
        victims.sort(key=lambda r: (r.req.batch_id, r.line_number))
        for row in victims[:limit]:
            self._put(attrs.evolve(row, req=step(row.req, Event(event), now).request))
        return min(len(victims), limit)
