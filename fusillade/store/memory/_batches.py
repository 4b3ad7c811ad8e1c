"""Batches in memory: creation, derived status with frozen counts, cancel, retry."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID, uuid4

import attrs

from fusillade import lifecycle
from fusillade.core.batches import INPUT_GONE, check_input_file, endpoint_mismatch, retry_refusal
from fusillade.core.ids import format_id
from fusillade.core.models import (
    UNSETTLED_STATES,
    BatchRecord,
    BatchView,
    FilePurpose,
    FileRecord,
    Request,
    RequestState,
)
from fusillade.core.transitions import Event, EventKind, step
from fusillade.core.windows import parse_completion_window
from fusillade.errors import Conflict, NotFound, ValidationError
from fusillade.store.interface import (
    BatchSpec,
    Page,
    output_expiry,
)
from fusillade.store.memory._base import MemoryBase
from fusillade.store.memory._rows import _INLINE_SWEEP, CA, UNSETTLED, P, _File, _Row


class BatchParts(MemoryBase):
    def create_batch(self, owner: str, spec: BatchSpec, *, now: datetime) -> BatchView:
        """Create a batch and its requests; idempotent for a given ``spec.batch_id`` and
        for a live key of ``spec.idempotency`` (``_replay_of``).

        Raises:
            NotFound: the input file does not exist or is not the owner's.
            ValidationError: the file is not an input file, is empty, or has a line
                whose url differs from the endpoint.
            Conflict: ``spec.batch_id`` is another owner's batch.
        """
        with self._lock:
            replay = self._replay_of(owner, spec.idempotency, now)
            batch_id = replay or spec.batch_id or self._new_id()
            existing = self._batches.get(batch_id)
            if existing is not None:
                if existing.owner != owner:
                    raise Conflict(f"batch id {batch_id} is taken")
            else:
                self._insert_batch(owner, batch_id, spec, now)
                lifecycle.created(self._batches[batch_id])
            if replay is None:
                self._remember(owner, spec.idempotency, batch_id, now)
            return self.get_batch(owner, batch_id, now=now)

    def _insert_batch(self, owner: str, batch_id: UUID, spec: BatchSpec, now: datetime) -> None:
        f = self._live_file(owner, spec.input_file_id)
        if f is None:
            raise NotFound("file", spec.input_file_id)
        check_input_file(spec.input_file_id, f.record.purpose, f.record.line_count)
        templates = self._templates[spec.input_file_id]
        for line, t in enumerate(templates, start=1):
            if t.path != spec.endpoint:
                raise endpoint_mismatch(line, t.path, spec.endpoint)
        expires_at = now + spec.window
        output_expires_at = output_expiry(spec, now)
        output_id, error_id = self._new_id(), self._new_id()
        for file_id, purpose in (
            (output_id, FilePurpose.BATCH_OUTPUT),
            (error_id, FilePurpose.BATCH_ERROR),
        ):
            name = f"batch_{batch_id.hex}_{purpose.value.removeprefix('batch_')}.jsonl"
            self._files[file_id] = _File(
                FileRecord(file_id, owner, name, purpose, 0, 0, now, output_expires_at, batch_id)
            )
            self._templates[file_id] = []
        self._batches[batch_id] = BatchRecord(
            id=batch_id,
            owner=owner,
            input_file_id=spec.input_file_id,
            output_file_id=output_id,
            error_file_id=error_id,
            endpoint=spec.endpoint,
            completion_window=spec.completion_window,
            created_at=now,
            expires_at=expires_at,
            total=f.record.line_count,
            models=f.models,
            metadata=dict(spec.metadata) if spec.metadata is not None else None,
        )
        ids = []
        for line, t in enumerate(templates, start=1):
            req = Request(id=uuid4(), batch_id=batch_id, state=P, not_before=now)
            self._put(_Row(req, spec.input_file_id, line, t.model, expires_at))
            ids.append(req.id)
        self._batch_rows[batch_id] = ids
        if output_expires_at is not None:
            self._output_expires[batch_id] = output_expires_at

    def get_batch(self, owner: str | None, batch_id: UUID, *, now: datetime) -> BatchView:
        """A batch with its derived status; ``owner=None`` reads any owner's batch."""
        with self._lock:
            return self._view(self._batch(owner, batch_id), now)

    def list_batches(
        self, owner: str, *, now: datetime, after: UUID | None = None, limit: int = 20
    ) -> Page[BatchView]:
        with self._lock:
            if after is not None:
                b = self._batches.get(after)
                if b is None or b.owner != owner:
                    raise ValidationError(
                        f"after: no batch with id {format_id('batch', after)}", param="after"
                    )
            found = sorted(
                (
                    b
                    for b in self._batches.values()
                    if b.owner == owner and (after is None or b.id < after)
                ),
                key=lambda b: b.id,
                reverse=True,
            )
            views = tuple(self._view(b, now) for b in found[:limit])
        return Page(views, has_more=len(found) > limit)

    def cancel_batch(self, owner: str, batch_id: UUID, *, now: datetime) -> BatchView:
        """Cancel a batch and cancel up to 10,000 of its pending requests at once.

        A batch with nothing unsettled, already cancelled or expired, or past its window
        is returned unchanged.
        """
        with self._lock:
            record = self._batch(owner, batch_id)
            if (
                record.cancelling_at is None
                and record.expired_at is None
                and record.expires_at > now
                and record.frozen_counts is None
                and any(r.req.state in UNSETTLED for r in self._rows_of(batch_id))
            ):
                self._batches[batch_id] = attrs.evolve(record, cancelling_at=now)
                lifecycle.cancel_requested(batch_id, owner)
                self._sweep_pending(
                    EventKind.CANCEL,
                    now,
                    _INLINE_SWEEP,
                    lambda b: b.id == batch_id and b.cancelling_at is not None,
                )
            return self.get_batch(owner, batch_id, now=now)

    def retry_batch(
        self, owner: str, batch_id: UUID, *, now: datetime, include_cancelled: bool = False
    ) -> BatchView:
        """Run the failed (and optionally canceled) requests of a batch again.

        Raises:
            Conflict: the batch is still cancelling or expiring (``retry_refusal``).
        """
        with self._lock:
            view = self.get_batch(owner, batch_id, now=now)
            record = view.record
            if (refusal := retry_refusal(record)) is not None:
                raise Conflict(refusal)
            if self._live_file(owner, record.input_file_id) is None:
                raise Conflict(INPUT_GONE)
            again = (RequestState.FAILED, CA) if include_cancelled else (RequestState.FAILED,)
            if not any(row.req.state in again for row in self._rows_of(batch_id)):
                return view  # nothing to retry: the batch is left as it is
            window = parse_completion_window(record.completion_window)
            expires_at = record.expires_at
            if record.expired_at is not None or expires_at <= now:
                expires_at = now + window
            self._batches[batch_id] = attrs.evolve(
                record,
                version=record.version + 1,
                frozen_counts=None,
                usage=None,
                last_finished_at=None,
                cancelling_at=None,
                expired_at=None,
                expires_at=expires_at,
            )
            for row in list(self._rows_of(batch_id)):
                if row.req.state in UNSETTLED_STATES:
                    # unsettled rows follow the batch to its new deadline
                    self._put(attrs.evolve(row, batch_expires_at=expires_at))
                elif row.req.state in again:
                    req = step(row.req, Event(EventKind.MANUAL_RETRY), now).request
                    self._put(
                        attrs.evolve(
                            row,
                            req=req,
                            input_tokens=None,
                            output_tokens=None,
                            body_is_json=False,
                            body_raw=None,
                            batch_expires_at=expires_at,
                        )
                    )
            return self.get_batch(owner, batch_id, now=now)
