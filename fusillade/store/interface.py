"""What every repository offers, and the records that cross its boundary.

Both ``fusillade.store.postgres.PostgresRepository`` and
``fusillade.store.memory.MemoryRepository`` implement ``Repository``; a stateful
hypothesis test drives both with the same operations and checks they agree.

All methods are synchronous and may block (the runtime calls them from worker threads).
Owner checks are part of every user-facing read and write: another owner's id raises
``NotFound``, exactly like an unknown id.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Generic, Protocol, TypeVar
from uuid import UUID

import attrs

from fusillade.core.attempts import AbortReason, AttemptResult, ClaimedRequest
from fusillade.core.batches import ClaimableBatch
from fusillade.core.idempotency import IdempotencyKey
from fusillade.core.live import LiveLines, ResultCursor
from fusillade.core.models import (
    BatchView,
    FailureReason,
    FilePurpose,
    FileRecord,
    RequestState,
    RequestTemplate,
)
from fusillade.core.results import ResultLine
from fusillade.core.trouble import BatchTrouble, ErrorKinds
from fusillade.core.webhooks import WebhookEvent

T = TypeVar("T")

Allotment = tuple[UUID, str, int]
"""``(batch_id, model, n)``: claim at most ``n`` due requests of ``model`` in that batch."""


def merge_allotments(allotments: Sequence[Allotment]) -> dict[tuple[UUID, str], int]:
    """The pairs to claim from and how many of each: repeated pairs summed, ``n <= 0``
    dropped; in first-mention order."""
    merged: dict[tuple[UUID, str], int] = {}
    for batch_id, model, n in allotments:
        merged[batch_id, model] = merged.get((batch_id, model), 0) + n
    return {pair: n for pair, n in merged.items() if n > 0}


@attrs.frozen
class Page(Generic[T]):
    """One page of a keyset-paginated listing."""

    items: tuple[T, ...]
    has_more: bool


@attrs.frozen
class RecordStats:
    """How many results were written, and which lost their race (fence failed)."""

    written: int
    lost: tuple[UUID, ...] = ()


@attrs.frozen
class ReclaimStats:
    requeued: int
    failed: int


@attrs.frozen
class RequestSummary:
    """A request as the per-request listing shows it."""

    id: UUID
    batch_id: UUID
    custom_id: str
    model: str
    state: RequestState
    attempts: int
    line_number: int
    response_status: int | None
    failure_reason: FailureReason | None
    failure_message: str | None
    claimed_at: datetime | None
    finished_at: datetime | None


@attrs.frozen
class RequestDetail:
    """A request with its bodies. ``response_body`` is text; when the upstream's bytes were
    not UTF-8 without NUL it is a rendering of them, and ``response_body_raw`` holds them
    (``response_content`` gives back the exact bytes either way)."""

    summary: RequestSummary
    method: str
    path: str
    request_body: str
    response_body: str | None
    response_body_raw: bytes | None = attrs.field(default=None, repr=False)

    @property
    def response_content(self) -> bytes | None:
        """The exact bytes of the upstream's last answer (``None``: none stored)."""
        if self.response_body_raw is not None:
            return self.response_body_raw
        return None if self.response_body is None else self.response_body.encode()


@attrs.frozen
class BudgetHolders:
    """Who shares one budget scope (``lease_budgets``): the live daemons holding it, and
    since when the asking daemon does."""

    holders: int
    since: datetime


@attrs.frozen
class DaemonInfo:
    id: UUID
    hostname: str
    pid: int
    version: str
    config: Mapping[str, object] = attrs.field(factory=dict)


@attrs.frozen
class BatchSpec:
    """What ``create_batch`` needs; ``batch_id`` makes creation idempotent, and so does
    ``idempotency`` (a client's key: the batch it first created is the answer)."""

    input_file_id: UUID
    endpoint: str
    completion_window: str
    window: timedelta
    metadata: Mapping[str, str] | None = None
    batch_id: UUID | None = None
    idempotency: IdempotencyKey | None = None
    # OpenAI's output_expires_after (anchor created_at): the output and error files
    # expire this long after the batch's creation; None: kept by the retention rule
    output_expires_after: timedelta | None = None


def output_expiry(spec: BatchSpec, now: datetime) -> datetime | None:
    """When the output and error files of a batch created ``now`` from ``spec`` expire."""
    return None if spec.output_expires_after is None else now + spec.output_expires_after


@attrs.frozen
class PurgeStats:
    """What one purge round removed (or, from ``purge_preview``, would remove).

    ``expired_files``: files past ``expires_at`` marked deleted; ``purged_files``: deleted
    input files whose content is now gone, ``templates`` their template rows blanked or
    deleted; ``batches``: finished batches whose requests are all gone, ``requests`` those
    rows; ``daemons``: stopped daemons' rows. ``more``: a part stopped at its chunk limit,
    so the caller should call again.
    """

    expired_files: int = 0
    purged_files: int = 0
    templates: int = 0
    batches: int = 0
    requests: int = 0
    daemons: int = 0
    more: bool = False

    def __add__(self, other: PurgeStats) -> PurgeStats:
        return PurgeStats(
            self.expired_files + other.expired_files,
            self.purged_files + other.purged_files,
            self.templates + other.templates,
            self.batches + other.batches,
            self.requests + other.requests,
            self.daemons + other.daemons,
            other.more,
        )


@attrs.frozen
class ModelActivity:
    """One model's requests on the status page: in flight now, and finished since a time."""

    model: str
    in_flight: int
    completed: int
    failed: int


@attrs.frozen
class RecentFailure:
    """A failed request as the status page lists it (``message``: its first 200 characters)."""

    request_id: UUID
    batch_id: UUID
    model: str
    finished_at: datetime
    response_status: int | None
    reason: FailureReason
    message: str | None


@attrs.frozen
class StatusSnapshot:
    """What the status page shows of one owner's (or every owner's) work.

    ``now``: the time it was read at. ``batches``: the newest unfinished and the newest
    finished batches, newest first. ``models``: activity in those batches, by model
    name. ``failures``: their latest failed requests, newest first.
    """

    now: datetime
    batches: tuple[BatchView, ...]
    models: tuple[ModelActivity, ...]
    failures: tuple[RecentFailure, ...]


STATUS_MESSAGE_CHARS = 200
"""How much of a failure's message ``RecentFailure`` keeps (``status_failures.sql``)."""


def status_batch_ids(views: Sequence[BatchView], since: datetime) -> list[UUID]:
    """The batches among ``views`` that may hold requests in flight or finished since
    ``since``: unfinished ones, and finished ones whose last result came since then."""
    return [
        v.record.id
        for v in views
        if v.record.frozen_counts is None
        or (v.record.last_finished_at is not None and v.record.last_finished_at >= since)
    ]


def with_result_size(record: FileRecord, sizes: Mapping[UUID, tuple[int, int]]) -> FileRecord:
    """``record`` with its size from ``sizes`` (batch id -> output and error file
    bytes) when it is an output or error file of a batch found there; else as it is."""
    if record.batch_id is None or record.batch_id not in sizes:
        return record
    output, error = sizes[record.batch_id]
    size = error if record.purpose is FilePurpose.BATCH_ERROR else output
    return attrs.evolve(record, bytes=size)


class Repository(Protocol):
    # files
    def create_file(
        self,
        owner: str,
        filename: str,
        templates: Iterable[RequestTemplate],
        *,
        now: datetime,
        size_bytes: int | None = None,
        expires_at: datetime | None = None,
        idempotency: IdempotencyKey | None = None,
    ) -> FileRecord:
        """``idempotency``: a key remembered with the file, in the same transaction; a
        live key of the owner answers with the file it created (as it is now: a deleted
        one is ``NotFound``) and stores nothing, a different request under it raises
        ``Conflict`` (``fusillade.core.idempotency``)."""
        ...

    def get_file(self, owner: str, file_id: UUID, *, sized: bool = True) -> FileRecord:
        """``sized=False``: an output or error file's ``bytes`` is not worked out (it may
        be 0); for callers that read its content anyway."""
        ...

    def list_files(
        self,
        owner: str,
        *,
        after: UUID | None = None,
        limit: int = 20,
        purposes: Collection[FilePurpose] | None = None,
        ascending: bool = False,
    ) -> Page[FileRecord]: ...
    def delete_file(self, owner: str, file_id: UUID, *, now: datetime) -> None: ...
    def iter_templates(self, owner: str, file_id: UUID) -> Iterator[RequestTemplate]: ...

    # batches
    def create_batch(self, owner: str, spec: BatchSpec, *, now: datetime) -> BatchView: ...
    def get_batch(self, owner: str | None, batch_id: UUID, *, now: datetime) -> BatchView: ...
    def list_batches(
        self, owner: str, *, now: datetime, after: UUID | None = None, limit: int = 20
    ) -> Page[BatchView]: ...
    def cancel_batch(self, owner: str, batch_id: UUID, *, now: datetime) -> BatchView: ...
    def retry_batch(
        self, owner: str, batch_id: UUID, *, now: datetime, include_cancelled: bool = False
    ) -> BatchView: ...

    # results
    def iter_results(
        self, owner: str | None, batch_id: UUID, *, errors: bool, page_size: int = 5000
    ) -> Iterator[ResultLine]: ...
    def iter_results_by_line(
        self, owner: str | None, batch_id: UUID, *, page_size: int = 5000
    ) -> Iterator[ResultLine]:
        """The result lines of a batch's finished requests (completed: output lines;
        failed and canceled: error lines) together, in input (line) order."""
        ...

    def live_output(
        self,
        owner: str | None,
        batch_id: UUID,
        *,
        after: ResultCursor | None,
        limit: int = 1000,
    ) -> LiveLines:
        """The batch's output lines not read by a follower at ``after`` (the lines of
        the transactions it waits on first, then at most ``limit`` after its position)
        and the next cursor (live_output.sql, ``fusillade.core.live.advance``)."""
        ...

    def list_requests(
        self,
        owner: str,
        batch_id: UUID,
        *,
        states: Sequence[RequestState] | None = None,
        after: UUID | None = None,
        limit: int = 20,
    ) -> Page[RequestSummary]: ...
    def get_request(self, owner: str | None, request_id: UUID) -> RequestDetail: ...
    def batch_trouble(
        self, owner: str | None, batch_id: UUID, *, now: datetime, cap: int = 10_000
    ) -> BatchTrouble:
        """What holds the batch back at ``now``: its retries waiting (counted up to
        ``cap``), those last answered 429, and its latest errors (``batch_trouble.sql``:
        bounded reads, for every progress line)."""
        ...

    def error_kinds(
        self, owner: str | None, batch_id: UUID, *, top: int = 5, scan: int = 1_000_000
    ) -> ErrorKinds:
        """The ``top`` most frequent kinds of error among the batch's latest ``scan``
        failed and canceled requests, each with its count and latest example
        (``error_kinds.sql``)."""
        ...

    def live_daemons(self, *, stale_before: datetime) -> int:
        """How many daemons are running with a heartbeat since ``stale_before``."""
        ...

    # status page
    def status(
        self,
        owner: str | None,
        *,
        now: datetime,
        since: datetime,
        batches: int = 20,
        failures: int = 20,
    ) -> StatusSnapshot:
        """The status page's snapshot for ``owner`` (``None``: every owner): up to
        ``batches`` unfinished and ``batches`` finished batches, model activity since
        ``since`` and the last ``failures`` failures in them (``status_*.sql``). Reading
        the batches freezes the settled ones, like ``get_batch``."""
        ...

    # idempotency keys
    def forget_idempotency_keys(self, *, now: datetime, limit: int = 1000) -> int:
        """Delete at most ``limit`` keys older than ``IDEMPOTENCY_TTL``; how many."""
        ...

    # retention (docs/semantics.md, "Retention")
    def purge(
        self,
        *,
        now: datetime,
        finished_before: datetime | None,
        stopped_before: datetime,
        limit: int = 1000,
    ) -> PurgeStats:
        """One bounded round of the purge, each part its own short transaction: mark
        files past ``expires_at`` deleted; remove a chunk of the content of deleted input
        files no unfinished batch reads; delete a chunk of the requests of finished
        batches that finished before ``finished_before`` (``None``: none) or whose output
        expired; delete stopped daemons' rows stopped before ``stopped_before``. Never
        touches an unfinished request. Call again while ``more``."""
        ...

    def purge_preview(
        self, *, now: datetime, finished_before: datetime | None, stopped_before: datetime
    ) -> PurgeStats:
        """What ``purge`` called until done would remove now; nothing is changed."""
        ...

    # clock
    def database_time(self) -> datetime | None:
        """The store's own clock, the one every process compares times by
        (``fusillade.runtime.clock``); ``None`` when the store has none of its own (the
        in-memory store lives in one process, whose clock it is)."""
        ...

    # daemon side
    def claimable_batches(self, *, now: datetime) -> list[ClaimableBatch]:
        """The batches a claim may take rows from at ``now`` (not frozen, cancelled or
        expired; deadline not passed) that have something pending, earliest deadline
        first, then oldest (``claimable_batches.sql``)."""
        ...

    def settled_batches(self, *, limit: int = 100) -> list[UUID]:
        """Batches not frozen yet whose requests are all settled: the next read of each
        freezes it and logs that it finished (``settled_batches.sql``,
        ``fusillade/lifecycle.py``). At most ``limit``, earliest deadline first."""
        ...

    def claim(
        self, daemon_id: UUID, allotments: Sequence[Allotment], *, now: datetime
    ) -> list[ClaimedRequest]:
        """Claim and start at most ``n`` due requests of each ``(batch_id, model, n)``,
        only from batches still claimable, per pair in line order (``claim.sql``); a pair
        named twice counts once with the sum of its ``n``."""
        ...

    def set_escalation(
        self, *, escalate: Sequence[UUID], clear: Sequence[UUID], now: datetime
    ) -> None:
        """Stamp ``escalated_at = now`` on the batches of ``escalate`` not stamped yet, and
        clear it on those of ``clear`` (``escalate`` wins for an id in both)."""
        ...

    def record_results(self, daemon_id: UUID, results: Sequence[AttemptResult]) -> RecordStats:
        """Write each result as the core computed it (``fusillade.core.attempts``): its
        state and ``RESULT_FIELDS``, only while the row is in one of its ``sources``
        under ``daemon_id``, at its attempt and with its start; the rest are lost races."""
        ...

    def release(
        self, daemon_id: UUID, *, now: datetime, request_ids: Sequence[UUID] | None = None
    ) -> int: ...
    def reclaim_dead(
        self, *, now: datetime, stale_before: datetime, max_attempts: int, limit: int = 1000
    ) -> ReclaimStats: ...
    def reclaim_timed_out(
        self, *, now: datetime, claimed_before: datetime, max_attempts: int, limit: int = 1000
    ) -> ReclaimStats: ...
    def batches_to_abort(
        self, batch_ids: Sequence[UUID], *, now: datetime
    ) -> dict[UUID, AbortReason]: ...
    def sweep(self, *, now: datetime, limit: int = 5000) -> int: ...
    def resume_creation(self, *, now: datetime, stale_before: datetime) -> int:
        """Advance by one chunk the creation of a batch whose creation has not moved
        since ``stale_before`` (its creator died half-way); the number of batches
        advanced (0: none left)."""
        ...

    def register_daemon(self, info: DaemonInfo, *, now: datetime) -> None: ...
    def heartbeat(self, daemon_id: UUID, *, now: datetime) -> bool: ...
    def stop_daemon(self, daemon_id: UUID, *, now: datetime) -> None:
        """Mark the daemon stopped and drop its budget leases."""
        ...

    def lease_budgets(
        self, daemon_id: UUID, scopes: Sequence[str], *, now: datetime, stale_before: datetime
    ) -> dict[str, BudgetHolders]:
        """Hold leases on ``scopes`` (and no others), drop the leases of daemons not running
        or stale (heartbeat before ``stale_before``), and say who holds each scope."""
        ...

    # webhooks (docs/webhooks.md): events are written by the freeze that makes a batch
    # terminal, for every owner
    def claim_webhook_events(
        self,
        daemon_id: UUID,
        owners: Sequence[str],
        *,
        now: datetime,
        lease_until: datetime,
        limit: int = 10,
    ) -> list[WebhookEvent]:
        """Claim up to ``limit`` events of ``owners`` due at ``now``: each counts an
        attempt (``WebhookEvent.attempts``), is leased to ``daemon_id`` until
        ``lease_until`` (no other daemon sends it meanwhile), then is due again unless
        settled. In id order."""
        ...

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
        """Record what a send of a claimed event came to: delivered (lands whoever sent
        it, unless already delivered), or failed with its next attempt or given up
        (lands only under the daemon's claim at ``event.attempts``). Whether it landed."""
        ...

    def give_up_webhook_events(
        self, *, now: datetime, created_before: datetime, limit: int = 1000
    ) -> int:
        """Give up the events still unsent that were created before ``created_before``
        and are not leased at ``now``; how many."""
        ...

    def webhook_outbox_pending(self, owners: Sequence[str]) -> int:
        """How many events of ``owners`` are neither delivered nor given up."""
        ...
