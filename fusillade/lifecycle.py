"""A batch's lifecycle in the logs: one line per transition, at the place it is made.

Each line is logged by the store, after the guarded statement that made the transition
committed and returned its row, so with any number of servers and daemons on one
database each transition is logged once, by the process that made it:

- **created**: the batch row inserted (``insert_batch.sql``; an idempotent repeat
  inserts nothing and logs nothing);
- **cancel requested**: ``cancel_batch.sql`` stamped ``cancelling_at``;
- **expired**: ``expire_batches.sql`` stamped ``expired_at`` (work was left at the
  deadline);
- **finished**: ``freeze_batch.sql`` froze the counts (every request settled): the
  status (completed, failed, cancelled or expired), the counts and the duration. The
  first read that finds a batch settled freezes it, and each daemon's maintenance
  reads the settled batches nobody read (``Repository.settled_batches``), so the line
  comes within a maintenance interval at most.

Logger ``fusillade.batches``, level INFO; the fields go in ``extra`` (docs/logging.md).
"""

from __future__ import annotations

import logging
from datetime import datetime
from uuid import UUID

from fusillade.core.ids import format_id
from fusillade.core.models import BatchRecord, BatchView

log = logging.getLogger("fusillade.batches")


def created(record: BatchRecord) -> None:
    batch = format_id("batch", record.id)
    log.info(
        "batch %s created: %d requests to %s for %s, window %s",
        batch,
        record.total,
        record.endpoint,
        record.owner,
        record.completion_window,
        extra={
            "event": "batch_created",
            "batch_id": batch,
            "owner": record.owner,
            "endpoint": record.endpoint,
            "requests": record.total,
            "completion_window": record.completion_window,
        },
    )


def cancel_requested(batch_id: UUID, owner: str) -> None:
    batch = format_id("batch", batch_id)
    log.info(
        "batch %s: cancel requested by %s",
        batch,
        owner,
        extra={"event": "batch_cancel_requested", "batch_id": batch, "owner": owner},
    )


def expired(batch_id: UUID, owner: str) -> None:
    batch = format_id("batch", batch_id)
    log.info(
        "batch %s of %s expired with work left: its unfinished requests are cancelled",
        batch,
        owner,
        extra={"event": "batch_expired", "batch_id": batch, "owner": owner},
    )


def finished(view: BatchView, now: datetime) -> None:
    """``view`` was just frozen: its status and counts are final."""
    record, c = view.record, view.counts
    batch = format_id("batch", record.id)
    end = record.last_finished_at or now
    seconds = max(0.0, (end - record.created_at).total_seconds())
    log.info(
        "batch %s %s: %d completed, %d failed, %d cancelled of %d in %s",
        batch,
        view.status.value,
        c.completed,
        c.failed,
        c.canceled,
        c.total,
        _duration(seconds),
        extra={
            "event": "batch_finished",
            "batch_id": batch,
            "owner": record.owner,
            "status": view.status.value,
            "completed": c.completed,
            "failed": c.failed,
            "cancelled": c.canceled,
            "requests": c.total,
            "duration_seconds": round(seconds, 3),
        },
    )


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, s = divmod(round(seconds), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}h{m:02d}m{s:02d}s" if hours else f"{m}m{s:02d}s"
