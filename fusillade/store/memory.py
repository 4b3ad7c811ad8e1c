"""The in-memory repository: the ``Repository`` contract in plain dicts, for tests and
for running without a database.

Theory of operation
-------------------
Every table of ``sql/migrations`` is a dict here (files, templates, batches, requests,
daemons), guarded by one re-entrant lock: each public method holds it for its whole
body, so a call is as atomic as the PostgreSQL transaction it mirrors. Iterators take
the lock once per page, like the PostgreSQL repository takes a connection per page.

Request state changes go through ``fusillade.core.transitions.step`` (claim is CLAIM
then START, results are SUCCEED/RETRY/FAIL/CANCEL, sweeps are CANCEL/EXPIRE, a batch
retry is MANUAL_RETRY), which refuses any pair the state table does not allow. Where a
statement in ``sql/queries`` writes columns differently from ``step`` (a result stores
the attempt's status, body and typed reason as given; a reclaim clears the owner and
stamps reason ``lost``), the row is adjusted after the step so that both stores hold
the same values: the SQL is the reference, and a stateful test
(``tests/integration/test_store_equivalence.py``) holds the two equal.

The fences are the SQL's: a daemon write lands only while the row is ``processing``
under that daemon and attempt (or, for a success, ``canceled`` after that attempt was
sent); anything else is a lost race, reported in ``RecordStats.lost``. The table's
CHECK constraints are checked before a write, and a violation raises ``StoreError``
with nothing written, as the database would.

Nothing here imports psycopg: ``fusillade.store.memory`` works in an installation
without it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING
from uuid import UUID, uuid4

import attrs

from fusillade.core.batches import count_states, derive, freeze, needs_freeze
from fusillade.core.models import (
    UNSETTLED_STATES,
    BatchRecord,
    BatchStatus,
    BatchView,
    Failure,
    FailureReason,
    FilePurpose,
    FileRecord,
    Request,
    RequestCounts,
    RequestState,
    RequestTemplate,
    Usage,
)
from fusillade.core.transitions import Event, EventKind, step
from fusillade.core.windows import parse_completion_window
from fusillade.errors import Conflict, NotFound, StoreError, ValidationError
from fusillade.ids import uuid7
from fusillade.store.interface import (
    AttemptResult,
    BatchSpec,
    ClaimedRequest,
    DaemonInfo,
    Page,
    ReclaimStats,
    RecordStats,
    RequestDetail,
    RequestSummary,
    ResultKind,
    ResultLine,
)

if TYPE_CHECKING:
    from fusillade.store.interface import Repository

P = RequestState.PENDING
PR = RequestState.PROCESSING
CA = RequestState.CANCELED
IN_FLIGHT = (RequestState.CLAIMED, PR)
UNSETTLED = (P, *IN_FLIGHT)
# As in postgres.py: cancel_batch turns this many pending rows canceled inline.
_INLINE_SWEEP = 10_000
_RESULT_EVENTS = {
    ResultKind.SUCCEEDED: EventKind.SUCCEED,
    ResultKind.RETRY: EventKind.RETRY,
    ResultKind.FAILED: EventKind.FAIL,
    ResultKind.CANCELED: EventKind.CANCEL,
}
_LOST_DEAD = "the daemon running this request stopped without recording a result"
_LOST_TIMED_OUT = "the request stayed in flight past its time limit"
_SMALLINT = range(-32768, 32768)


@attrs.frozen
class _File:
    record: FileRecord
    models: tuple[str, ...] = ()
    deleted_at: datetime | None = None


@attrs.frozen
class _Row:
    """A ``requests`` row: the state machine's ``Request`` plus the copied columns."""

    req: Request
    file_id: UUID
    line_number: int
    model: str
    batch_expires_at: datetime
    input_tokens: int | None = None
    output_tokens: int | None = None


@attrs.frozen
class _Daemon:
    info: DaemonInfo
    status: str
    started_at: datetime
    heartbeat_at: datetime
    stopped_at: datetime | None = None


def _no_nul(*values: str | None) -> None:
    """PostgreSQL text cannot hold NUL; refuse it here the same way."""
    if any(v is not None and "\x00" in v for v in values):
        raise StoreError("database error: text values cannot contain NUL (0x00)")


def _check(row: _Row) -> None:
    """The CHECK constraints of the ``requests`` table (0001_initial.sql)."""
    r = row.req
    s = r.state
    owned = (r.daemon_id, r.claimed_at)
    ok = r.budget_base <= r.attempts and r.attempts >= 0 and r.budget_base >= 0
    if s is P:
        ok = ok and owned == (None, None) and r.started_at is None and r.finished_at is None
    elif s in IN_FLIGHT:
        ok = ok and None not in owned and r.finished_at is None
        ok = ok and (r.started_at is not None) == (s is PR)
    elif s is RequestState.COMPLETED:
        ok = ok and r.finished_at is not None
        ok = ok and r.response_status is not None and r.response_body is not None
    elif s is RequestState.FAILED:
        ok = ok and r.finished_at is not None and r.failure is not None
    else:
        reason = r.failure.reason if r.failure else None
        ok = ok and r.finished_at is not None
        ok = ok and reason in (FailureReason.CANCELLED, FailureReason.EXPIRED)
    if r.response_status is not None and r.response_status not in _SMALLINT:
        ok = False
    if not ok:
        raise StoreError(f"database error: request {r.id} would violate a check constraint")


class MemoryRepository:
    """A ``Repository`` in process memory. Thread-safe; nothing survives the process."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._files: dict[UUID, _File] = {}
        self._templates: dict[UUID, list[RequestTemplate]] = {}
        self._batches: dict[UUID, BatchRecord] = {}
        self._rows: dict[UUID, _Row] = {}
        self._batch_rows: dict[UUID, list[UUID]] = {}  # in line order
        self._by_state: dict[RequestState, set[UUID]] = {s: set() for s in RequestState}
        self._daemons: dict[UUID, _Daemon] = {}
        self._last_id = UUID(int=0)

    # Parity with PostgresRepository, so either can be used as a context manager.
    def open(self, *, wait: bool = True, timeout: float = 30.0) -> None:
        pass

    def close(self) -> None:
        pass

    def ping(self) -> None:
        pass

    def __enter__(self) -> MemoryRepository:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    # ---------------------------------------------------------------- helpers

    def _new_id(self) -> UUID:
        """A uuid7 strictly greater than every earlier one, so id order is creation
        order even within one millisecond."""
        new = uuid7()
        if new <= self._last_id:
            new = uuid7((self._last_id.int >> 80) + 1)
        self._last_id = new
        return new

    def _put(self, row: _Row) -> None:
        old = self._rows.get(row.req.id)
        if old is not None:
            self._by_state[old.req.state].discard(row.req.id)
        self._rows[row.req.id] = row
        self._by_state[row.req.state].add(row.req.id)

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
        return derive(frozen, frozen.frozen_counts, now)

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
            failure_reason=r.failure.reason.value if r.failure else None,
            failure_message=r.failure.message if r.failure else None,
            claimed_at=r.claimed_at,
            finished_at=r.finished_at,
        )

    # ------------------------------------------------------------------ files

    def create_file(
        self,
        owner: str,
        filename: str,
        templates: Iterable[RequestTemplate],
        *,
        now: datetime,
        size_bytes: int | None = None,
        expires_at: datetime | None = None,
    ) -> FileRecord:
        """Store a file of templates; if ``templates`` raises, nothing is stored."""
        # Consumed before the lock: a validating stream may be slow or raise.
        items = list(templates)
        _no_nul(owner, filename)
        for t in items:
            _no_nul(t.custom_id, t.model, t.body, t.path, t.method, t.endpoint, t.api_key)
        size = sum(len(t.body.encode()) for t in items) if size_bytes is None else size_bytes
        with self._lock:
            record = FileRecord(
                id=self._new_id(),
                owner=owner,
                filename=filename,
                purpose=FilePurpose.BATCH,
                bytes=size,
                line_count=len(items),
                created_at=now,
                expires_at=expires_at,
            )
            self._files[record.id] = _File(record, tuple(sorted({t.model for t in items})))
            self._templates[record.id] = items
        return record

    def get_file(self, owner: str, file_id: UUID) -> FileRecord:
        with self._lock:
            f = self._live_file(owner, file_id)
        if f is None:
            raise NotFound("file", file_id)
        return f.record

    def list_files(
        self,
        owner: str,
        *,
        after: UUID | None = None,
        limit: int = 20,
        purpose: FilePurpose | None = None,
    ) -> Page[FileRecord]:
        with self._lock:
            if after is not None and self._live_file(owner, after) is None:
                raise ValidationError(f"after: no file with id {after}", param="after")
            found = sorted(
                (
                    f.record
                    for f in self._files.values()
                    if f.record.owner == owner
                    and f.deleted_at is None
                    and (after is None or f.record.id < after)
                    and (purpose is None or f.record.purpose is purpose)
                ),
                key=lambda r: r.id,
                reverse=True,
            )
        return Page(tuple(found[:limit]), has_more=len(found) > limit)

    def delete_file(self, owner: str, file_id: UUID, *, now: datetime) -> None:
        with self._lock:
            f = self._live_file(owner, file_id)
            if f is None:
                raise NotFound("file", file_id)
            self._files[file_id] = attrs.evolve(f, deleted_at=now)

    def iter_templates(self, owner: str, file_id: UUID) -> Iterator[RequestTemplate]:
        """The templates of an input file in line order (the api key is never returned)."""
        record = self.get_file(owner, file_id)
        if record.purpose is not FilePurpose.BATCH:
            raise NotFound("input file", file_id)
        with self._lock:
            items = [attrs.evolve(t, api_key=None) for t in self._templates[file_id]]
        yield from items

    # ---------------------------------------------------------------- batches

    def create_batch(self, owner: str, spec: BatchSpec, *, now: datetime) -> BatchView:
        """Create a batch and its requests; idempotent for a given ``spec.batch_id``.

        Raises:
            NotFound: the input file does not exist or is not the owner's.
            ValidationError: the file is not an input file, is empty, or has a line
                whose url differs from the endpoint.
            Conflict: ``spec.batch_id`` is another owner's batch.
        """
        with self._lock:
            batch_id = spec.batch_id or self._new_id()
            existing = self._batches.get(batch_id)
            if existing is not None:
                if existing.owner != owner:
                    raise Conflict(f"batch id {batch_id} is taken")
            else:
                self._insert_batch(owner, batch_id, spec, now)
            return self.get_batch(owner, batch_id, now=now)

    def _insert_batch(self, owner: str, batch_id: UUID, spec: BatchSpec, now: datetime) -> None:
        f = self._live_file(owner, spec.input_file_id)
        if f is None:
            raise NotFound("file", spec.input_file_id)
        if f.record.purpose is not FilePurpose.BATCH:
            raise ValidationError(
                f"file {spec.input_file_id} is not a batch input file", param="input_file_id"
            )
        if f.record.line_count == 0:
            raise ValidationError("the input file has no requests", param="input_file_id")
        templates = self._templates[spec.input_file_id]
        for line, t in enumerate(templates, start=1):
            if t.path != spec.endpoint:
                raise ValidationError(
                    f"line {line}: url {t.path!r} does not match "
                    f"the batch endpoint {spec.endpoint!r}",
                    param="endpoint",
                )
        expires_at = now + spec.window
        output_id, error_id = self._new_id(), self._new_id()
        for file_id, purpose in (
            (output_id, FilePurpose.BATCH_OUTPUT),
            (error_id, FilePurpose.BATCH_ERROR),
        ):
            name = f"batch_{batch_id.hex}_{purpose.value.removeprefix('batch_')}.jsonl"
            self._files[file_id] = _File(
                FileRecord(file_id, owner, name, purpose, 0, 0, now, None, batch_id)
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
                    raise ValidationError(f"after: no batch with id {after}", param="after")
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
            Conflict: the batch is still cancelling.
        """
        with self._lock:
            view = self.get_batch(owner, batch_id, now=now)
            if view.status is BatchStatus.CANCELLING:
                raise Conflict("the batch is still cancelling; retry once it is cancelled")
            record = view.record
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
                            batch_expires_at=expires_at,
                        )
                    )
            return self.get_batch(owner, batch_id, now=now)

    # ---------------------------------------------------------------- results

    def iter_results(
        self, owner: str | None, batch_id: UUID, *, errors: bool, page_size: int = 1000
    ) -> Iterator[ResultLine]:
        """Output (or error) lines of a batch in the order they ended, a page at a time."""
        with self._lock:
            self._batch(owner, batch_id)
        states = (RequestState.FAILED, CA) if errors else (RequestState.COMPLETED,)
        cursor: tuple[datetime, UUID] | None = None
        while True:
            with self._lock:
                page: list[tuple[datetime, UUID, ResultLine]] = []
                for row in self._rows_of(batch_id):
                    r = row.req
                    if r.state not in states or r.finished_at is None:
                        continue
                    key = (r.finished_at, r.id)
                    if cursor is not None and key <= cursor:
                        continue
                    t = self._templates[row.file_id][row.line_number - 1]
                    line = ResultLine(
                        request_id=r.id,
                        custom_id=t.custom_id,
                        state=r.state,
                        status=r.response_status,
                        body=r.response_body,
                        failure_reason=r.failure.reason.value if r.failure else None,
                        failure_message=r.failure.message if r.failure else None,
                        finished_at=r.finished_at,
                    )
                    page.append((*key, line))
                page.sort(key=lambda x: (x[0], x[1]))
                page = page[:page_size]
            yield from (line for _, _, line in page)
            if len(page) < page_size:
                return
            cursor = (page[-1][0], page[-1][1])

    def list_requests(
        self,
        owner: str,
        batch_id: UUID,
        *,
        states: Sequence[RequestState] | None = None,
        after: UUID | None = None,
        limit: int = 20,
    ) -> Page[RequestSummary]:
        with self._lock:
            self._batch(owner, batch_id)
            after_line = 0
            if after is not None:
                row = self._rows.get(after)
                if (
                    row is None
                    or row.req.batch_id != batch_id
                    or self._batches[row.req.batch_id].owner != owner
                ):
                    raise ValidationError(f"after: no request with id {after}", param="after")
                after_line = row.line_number
            wanted = set(states) if states else None
            found = []
            for row in self._rows_of(batch_id):
                if row.line_number <= after_line:
                    continue
                if wanted is not None and row.req.state not in wanted:
                    continue
                found.append(row)
                if len(found) > limit:
                    break
            items = tuple(self._summary(r) for r in found[:limit])
        return Page(items, has_more=len(found) > limit)

    def get_request(self, owner: str | None, request_id: UUID) -> RequestDetail:
        with self._lock:
            row, t = self._request_of(owner, request_id)
            return RequestDetail(
                summary=self._summary(row),
                method=t.method,
                path=t.path,
                request_body=t.body,
                response_body=row.req.response_body,
            )

    # ------------------------------------------------------------ daemon side

    def _claimable(self, b: BatchRecord) -> bool:
        return b.cancelling_at is None and b.expired_at is None

    def active_models(self, *, now: datetime) -> list[str]:
        with self._lock:
            return sorted(
                {
                    m
                    for b in self._batches.values()
                    if b.frozen_counts is None and self._claimable(b) and b.expires_at > now
                    for m in b.models
                }
            )

    def claim(
        self, daemon_id: UUID, slots: Mapping[str, int], *, now: datetime
    ) -> list[ClaimedRequest]:
        """Claim and start up to ``slots[model]`` due requests per model, in claim order:
        earliest batch deadline, then batch id, then line."""
        wanted = {m: n for m, n in slots.items() if n > 0}
        if not wanted:
            return []
        with self._lock:
            due: dict[str, list[_Row]] = {m: [] for m in wanted}
            for rid in self._by_state[P]:
                row = self._rows[rid]
                if (
                    row.model in due
                    and row.req.not_before <= now
                    and row.batch_expires_at > now
                    and self._claimable(self._batches[row.req.batch_id])
                ):
                    due[row.model].append(row)
            out = []
            for model, n in wanted.items():
                rows = sorted(
                    due[model], key=lambda r: (r.batch_expires_at, r.req.batch_id, r.line_number)
                )
                for row in rows[:n]:
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
                            api_key=t.api_key,
                        )
                    )
            return out

    def _apply_result(self, row: _Row, daemon_id: UUID, result: AttemptResult) -> _Row | None:
        """The row after ``result``, or ``None`` when the fence refuses it (a lost race)."""
        r = row.req
        sent_then_canceled = (
            result.kind is ResultKind.SUCCEEDED and r.state is CA and r.started_at is not None
        )
        if r.daemon_id != daemon_id or r.attempts != result.attempt:
            return None
        if r.state is not PR and not sent_then_canceled:
            return None
        event = Event(
            _RESULT_EVENTS[result.kind],
            attempt=result.attempt,
            not_before=result.not_before,
            status=result.status,
            body=result.body,
            failure=result.failure,
        )
        new = step(r, event, result.finished_at).request
        # record_results.sql stores what the attempt reported, as reported: the status
        # and body for every kind, the typed reason without the HTTP details, and a
        # retry's not_before as given, never before the attempt ended.
        retry = result.kind is ResultKind.RETRY
        new = attrs.evolve(
            new,
            not_before=max(result.not_before or result.finished_at, result.finished_at)
            if retry
            else r.not_before,
            response_status=result.status,
            response_body=result.body,
            failure=Failure(result.failure.reason, result.failure.message)
            if result.failure
            else None,
        )
        return attrs.evolve(
            row, req=new, input_tokens=result.input_tokens, output_tokens=result.output_tokens
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
                _no_nul(result.body, result.failure.message if result.failure else None)
                if result.status is not None and result.status not in _SMALLINT:
                    raise StoreError(f"database error: status {result.status} out of range")
            for result in results:
                row = self._rows.get(result.request_id)
                if row is None:
                    continue
                new = self._apply_result(row, daemon_id, result)
                if new is not None:
                    _check(new)
                    staged[result.request_id] = (row, new)
            for old, new in staged.values():
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
            # FAIL applies; the SQL also clears the owner and stamps the reason.
            kind = EventKind.FAIL if spent else EventKind.RECLAIM
            req = step(row.req, Event(kind), now).request
            req = attrs.evolve(
                req,
                daemon_id=None,
                claimed_at=None,
                started_at=None,
                not_before=now,
                failure=Failure(FailureReason.LOST, message),
            )
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

    def batches_to_abort(self, batch_ids: Sequence[UUID], *, now: datetime) -> dict[UUID, str]:
        with self._lock:
            out = {}
            for batch_id in batch_ids:
                b = self._batches.get(batch_id)
                if b is None:
                    continue
                if b.cancelling_at is not None:
                    out[b.id] = "cancelled"
                elif b.expired_at is not None or b.expires_at <= now:
                    out[b.id] = "expired"
            return out

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


if TYPE_CHECKING:

    def _implements(repo: MemoryRepository) -> Repository:
        return repo  # mypy checks that MemoryRepository satisfies the protocol
