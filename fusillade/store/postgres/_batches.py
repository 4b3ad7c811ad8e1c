"""Batches: idempotent creation, derived status with frozen counts, cancel, retry."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
import psycopg.errors
from psycopg.types.json import Jsonb

from fusillade import lifecycle
from fusillade.core.batches import (
    INPUT_GONE,
    check_input_file,
    derive,
    endpoint_mismatch,
    needs_freeze,
    retry_refusal,
)
from fusillade.core.ids import format_id
from fusillade.core.models import (
    BatchRecord,
    BatchView,
    FilePurpose,
    RequestCounts,
)
from fusillade.core.webhooks import event_type
from fusillade.core.windows import parse_completion_window
from fusillade.errors import Conflict, NotFound, ValidationError
from fusillade.ids import next_uuid7
from fusillade.serde import structure
from fusillade.store.interface import (
    BatchSpec,
    Page,
    output_expiry,
)
from fusillade.store.postgres._base import CANCEL_CHANNEL, WORK_CHANNEL, PostgresBase

# Pending rows of a cancelled batch turned canceled inline by cancel_batch; the rest
# are swept by daemons, so the cancel call stays O(1) for large batches.
_INLINE_SWEEP = 10_000


class BatchQueries(PostgresBase):
    def create_batch(self, owner: str, spec: BatchSpec, *, now: datetime) -> BatchView:
        """Create a batch, then its requests in chunks of ``create_chunk`` lines.

        The batch row comes first (with its output and error files, in one transaction),
        then one transaction per chunk of requests (``create_batch_requests.sql``), so
        the creation of a file of millions of lines never meets the statement timeout.
        Until the last chunk, the lines without a request count as pending: the batch is
        ``in_progress`` and its counts add up; daemons may start on the rows that exist.

        Idempotent for a given ``spec.batch_id``, and for ``spec.idempotency`` (a key
        claimed in the batch row's transaction names the batch to finish and return,
        ``_claim_key``): a repeated call (a retried request, a
        re-delivered job, ``run`` resuming) returns the existing batch, inserts nothing
        twice, and finishes a creation that was cut short. A transaction-level
        advisory lock serialises the batch row's creation for one id; each chunk locks the
        batch row, so concurrent writers of one batch take turns. A creation whose
        process died is finished by maintenance (``resume_creation``). Every step is its
        own ``_tx`` (no session state), so all of it works through PgBouncer.

        Raises:
            NotFound: the input file does not exist or is not the owner's.
            ValidationError: the file is not an input file, is empty, or has a line
                whose url differs from the endpoint.
            Conflict: ``spec.batch_id`` is another owner's batch, or the key of
                ``spec.idempotency`` was used for a different request.
        """
        batch_id = spec.batch_id or next_uuid7()
        created: BatchRecord | None = None
        with self._tx() as cur:
            if spec.idempotency is not None:
                # first: a concurrent request with the key waits here for this one
                replay = self._claim_key(cur, owner, spec.idempotency, batch_id, now)
                batch_id = replay or batch_id
            cur.execute(self.q.lock_batch, {"id": batch_id})
            existing = cur.execute(self.q.get_batch, {"id": batch_id, "owner": None}).fetchone()
            if existing is not None:
                if existing["owner"] != owner:
                    raise Conflict(f"batch id {batch_id} is taken")
            else:
                self._insert_batch(cur, owner, batch_id, spec, now)
                created = self._read_batch(cur, owner, batch_id)
        if created is not None:  # committed: this call created it
            lifecycle.created(created)
        while True:
            with self._tx() as cur:
                if self._create_chunk(cur, batch_id, now) is None:
                    break
        return self.get_batch(owner, batch_id, now=now)

    def _create_chunk(
        self, cur: psycopg.Cursor[dict[str, Any]], batch_id: UUID, now: datetime
    ) -> int | None:
        """Create the next chunk of a batch's requests and wake the daemons; the line
        created through so far, or None once all exist."""
        row = cur.execute(
            self.q.create_batch_requests,
            {"batch_id": batch_id, "chunk": self.create_chunk, "now": now},
        ).fetchone()
        if row is None:
            return None
        if row["inserted"]:
            cur.execute(self.q.notify, {"channel": WORK_CHANNEL, "payload": str(batch_id)})
        through: int | None = row["created_through"]
        return through

    def resume_creation(self, *, now: datetime, stale_before: datetime) -> int:
        """Create one chunk of requests of a batch whose creation has not moved since
        ``stale_before`` (its creator died half-way), if any.

        Returns how many batches were advanced (0 or 1): maintenance calls it until 0.
        """
        with self._tx() as cur:
            picked = cur.execute(
                self.q.pick_unfinished_creation, {"stale_before": stale_before}
            ).fetchone()
            if picked is None:
                return 0
            self._create_chunk(cur, picked["id"], now)
            return 1

    def _insert_batch(
        self,
        cur: psycopg.Cursor[dict[str, Any]],
        owner: str,
        batch_id: UUID,
        spec: BatchSpec,
        now: datetime,
    ) -> None:
        file_row = cur.execute(
            self.q.get_file, {"id": spec.input_file_id, "owner": owner}
        ).fetchone()
        if file_row is None:
            raise NotFound("file", spec.input_file_id)
        check_input_file(
            spec.input_file_id, FilePurpose(file_row["purpose"]), file_row["line_count"]
        )
        mismatch = cur.execute(
            self.q.first_path_mismatch,
            {"file_id": spec.input_file_id, "endpoint": spec.endpoint},
        ).fetchone()
        if mismatch is not None:
            raise endpoint_mismatch(mismatch["line_number"], mismatch["path"], spec.endpoint)
        expires_at = now + spec.window
        output_expires_at = output_expiry(spec, now)
        output_id, error_id = next_uuid7(), next_uuid7()
        for file_id, purpose in (
            (output_id, FilePurpose.BATCH_OUTPUT),
            (error_id, FilePurpose.BATCH_ERROR),
        ):
            cur.execute(
                self.q.insert_file,
                {
                    "id": file_id,
                    "owner": owner,
                    "filename": f"batch_{batch_id.hex}_{purpose.value.removeprefix('batch_')}"
                    ".jsonl",
                    "purpose": purpose.value,
                    "batch_id": batch_id,
                    "created_at": now,
                    "expires_at": output_expires_at,
                },
            )
        cur.execute(
            self.q.insert_batch,
            {
                "id": batch_id,
                "owner": owner,
                "input_file_id": spec.input_file_id,
                "output_file_id": output_id,
                "error_file_id": error_id,
                "endpoint": spec.endpoint,
                "completion_window": spec.completion_window,
                "metadata": Jsonb(dict(spec.metadata)) if spec.metadata is not None else None,
                "created_at": now,
                "expires_at": expires_at,
                "total": file_row["line_count"],
                "models": file_row["models"],
                "output_expires_at": output_expires_at,
            },
        )

    def _live_counts(
        self, cur: psycopg.Cursor[dict[str, Any]], records: Sequence[BatchRecord]
    ) -> dict[UUID, RequestCounts]:
        live = [r.id for r in records if r.frozen_counts is None]
        tallies: dict[UUID, dict[str, int]] = {i: {} for i in live}
        if live:
            for row in cur.execute(self.q.count_batch_requests, {"batch_ids": live}):
                tally = tallies[row["batch_id"]]
                tally[row["state"]] = tally.get(row["state"], 0) + row["n"]
        out: dict[UUID, RequestCounts] = {}
        for r in records:
            if r.frozen_counts is not None:
                out[r.id] = r.frozen_counts
                continue
            t = tallies[r.id]
            out[r.id] = RequestCounts(
                total=r.total,
                pending=t.get("pending", 0),
                in_progress=t.get("claimed", 0) + t.get("processing", 0),
                completed=t.get("completed", 0),
                failed=t.get("failed", 0),
                canceled=t.get("canceled", 0),
            )
        return out

    def _views(
        self,
        cur: psycopg.Cursor[dict[str, Any]],
        records: Sequence[BatchRecord],
        owner: str | None,
        now: datetime,
        frozen_now: list[BatchView],
    ) -> list[BatchView]:
        """Derive views, freezing (once) any batch that is terminal but not yet frozen;
        the views of those this call froze are added to ``frozen_now`` (for the caller
        to log once the transaction committed)."""
        counts = self._live_counts(cur, records)
        views = []
        for record in records:
            view = derive(record, counts[record.id], now)
            if needs_freeze(view):
                cur.execute(self.q.lock_batch_for_freeze, {"id": record.id})
                frozen = cur.execute(
                    self.q.freeze_batch, {"id": record.id, "version": record.version}
                ).fetchone()
                if frozen is not None:
                    cur.execute(self.q.fold_batch_state_counts, {"id": record.id})
                    record = self._read_batch(cur, owner, record.id)
                    assert record.frozen_counts is not None
                    view = derive(record, record.frozen_counts, now)
                    frozen_now.append(view)
                    self._insert_event(cur, view, now)
            views.append(view)
        return views

    def _insert_event(
        self, cur: psycopg.Cursor[dict[str, Any]], view: BatchView, now: datetime
    ) -> None:
        """The webhook event of a batch that has just become terminal, in the freeze's
        transaction (docs/webhooks.md): for every owner, sent only where configured."""
        kind = event_type(view.status)
        if kind is None:  # a freeze always ends in a terminal status; nothing to say if not
            return
        record = view.record
        cur.execute(
            self.q.insert_webhook_event,
            {
                "id": next_uuid7(),
                "owner": record.owner,
                "type": kind,
                "batch_id": record.id,
                "batch_version": record.version,
                "created_at": now,
            },
        )

    def get_batch(self, owner: str | None, batch_id: UUID, *, now: datetime) -> BatchView:
        """A batch with its derived status; ``owner=None`` reads any owner's batch."""
        frozen: list[BatchView] = []
        with self._tx() as cur:
            record = self._read_batch(cur, owner, batch_id)
            view = self._views(cur, [record], owner, now, frozen)[0]
        for done in frozen:
            lifecycle.finished(done, now)
        return view

    def list_batches(
        self, owner: str, *, now: datetime, after: UUID | None = None, limit: int = 20
    ) -> Page[BatchView]:
        with self._tx() as cur:
            if (
                after is not None
                and cur.execute(self.q.get_batch, {"id": after, "owner": owner}).fetchone() is None
            ):
                raise ValidationError(
                    f"after: no batch with id {format_id('batch', after)}", param="after"
                )
            rows = cur.execute(
                self.q.list_batches, {"owner": owner, "after": after, "limit": limit + 1}
            ).fetchall()
            records = [structure(r, BatchRecord) for r in rows[:limit]]
            frozen: list[BatchView] = []
            views = self._views(cur, records, owner, now, frozen)
        for done in frozen:
            lifecycle.finished(done, now)
        return Page(tuple(views), has_more=len(rows) > limit)

    def cancel_batch(self, owner: str, batch_id: UUID, *, now: datetime) -> BatchView:
        """Cancel a batch: O(1) on its row, plus a bounded inline sweep of pending rows.

        A batch that is already finished, cancelled or expired is returned unchanged.
        """
        with self._tx() as cur:
            self._read_batch(cur, owner, batch_id)
            hit = cur.execute(
                self.q.cancel_batch, {"id": batch_id, "owner": owner, "now": now}
            ).fetchone()
            if hit is not None:
                cur.execute(
                    self.q.sweep_cancelled,
                    {"now": now, "limit": _INLINE_SWEEP, "batch_id": batch_id},
                )
                cur.execute(self.q.notify, {"channel": CANCEL_CHANNEL, "payload": str(batch_id)})
        if hit is not None:  # committed: this call cancelled it
            lifecycle.cancel_requested(batch_id, owner)
        return self.get_batch(owner, batch_id, now=now)

    def retry_batch(
        self, owner: str, batch_id: UUID, *, now: datetime, include_cancelled: bool = False
    ) -> BatchView:
        """Run the failed (and optionally canceled) requests of a batch again.

        Raises:
            Conflict: the batch is still cancelling or expiring (``retry_refusal``), also
                when the cancel or the expiry landed after this call read the batch; or
                another retry changed the batch meanwhile.
        """
        view = self.get_batch(owner, batch_id, now=now)
        record = view.record
        if (refusal := retry_refusal(record)) is not None:
            raise Conflict(refusal)
        with self._tx() as cur:
            if (
                cur.execute(
                    self.q.get_file, {"id": record.input_file_id, "owner": owner}
                ).fetchone()
                is None
            ):
                # its content may already be purged (maintenance): nothing to send again
                raise Conflict(INPUT_GONE)
            row = cur.execute(
                self.q.retry_batch,
                {
                    "id": batch_id,
                    "owner": owner,
                    "version": record.version,
                    "include_cancelled": include_cancelled,
                    "now": now,
                    "window": parse_completion_window(record.completion_window),
                },
            ).fetchone()
            if row is None or row["batches"] == 0:
                # Refused by the statement's guard, or nothing to retry: say which, from
                # the batch as it is now (a cancel may have landed since the read above).
                current = self._read_batch(cur, owner, batch_id)
                if current.version != record.version:
                    raise Conflict("the batch changed while retrying; try again")
                if (refusal := retry_refusal(current)) is not None:
                    raise Conflict(refusal)
                return view  # nothing to retry: the batch is left as it is
            cur.execute(self.q.notify, {"channel": WORK_CHANNEL, "payload": str(batch_id)})
        return self.get_batch(owner, batch_id, now=now)
