"""A batch's status, timestamps and counts, derived from its row, its counts and ``now``.

Theory of operation
-------------------
The store keeps few facts per batch: ``created_at``, ``expires_at``, the ``cancelling_at``
and ``expired_at`` stamps, and, once nothing is unsettled, the frozen counts with
``last_finished_at`` (``freeze_batch.sql``; ``freeze`` here is its pure twin). Everything
else is derived by ``derive``, first matching rule wins:

1. ``total == 0``: ``failed`` (``failed_at = created_at``; ``in_progress_at`` null). Creation
   refuses empty files, so this is a safety net.
2. A cancel requested before the deadline (``cancelling_at < expires_at``): ``cancelling``
   until the counts are frozen, then ``cancelled`` with ``cancelled_at`` = the later of
   ``cancelling_at`` and ``last_finished_at`` (when the last request settled, never before
   the cancel). A cancel at or after the deadline came too late and is ignored: the batch
   had already expired by rule 3.
3. ``expired`` once frozen, when the ``expired_at`` stamp is set (the window passed with
   work left) or the frozen ``last_finished_at >= expires_at`` (the work ended after the
   deadline: "not completed within the window", even when the last in-flight requests
   succeeded before the sweep). ``expired_at`` is the stamp, else ``expires_at``.
4. Frozen: ``completed``, ``completed_at = finalizing_at = last_finished_at``.
5. Not frozen, and nothing unsettled or the window has passed: ``finalizing``
   (``finalizing_at`` null: the time is only known once frozen). Past the deadline this
   is the expiry being applied: the sweep turns the pending requests ``canceled`` (reason
   ``expired``) and daemons abort those in flight; a terminal status is reported only
   once the counts stop moving, so a client that sees ``expired`` can download final
   results. The freeze follows on the next read or maintenance round; ``needs_freeze``
   says when it is due.
6. Otherwise ``in_progress``.

``in_progress_at = created_at`` (input is validated before the batch exists, so
``validating`` never shows). Every terminal status needs frozen counts, so once a batch
is terminal its status and timestamps never change until a retry resets the row, and
reading it never recounts its requests. The stateful test in
``tests/unit/test_batches.py`` checks all of this.

Counts are the frozen ones when set (live counts are ignored), else the live ones.
``has_output`` (an ``output_file_id``) needs a completed request; ``has_errors`` (an
``error_file_id``) a failed or canceled one, so a batch where every line failed has
``output_file_id: null`` as at OpenAI. Token usage is summed by the store, not here.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from uuid import UUID

import attrs

from fusillade.core.models import (
    BatchRecord,
    BatchStatus,
    BatchView,
    FilePurpose,
    RequestCounts,
    RequestState,
)
from fusillade.core.windows import parse_completion_window
from fusillade.errors import ValidationError


def derive(record: BatchRecord, counts: RequestCounts, now: datetime) -> BatchView:
    """The batch as readers see it at ``now``; the rules are in the module docstring.

    ``counts`` are the live counts (ignored when ``record.frozen_counts`` is set). Never
    raises, whatever the inputs: a read must not fail on an odd row.
    """
    frozen = record.frozen_counts is not None
    c = record.frozen_counts if record.frozen_counts is not None else counts
    last = record.last_finished_at
    stamps: dict[str, datetime | None] = {"in_progress_at": record.created_at}

    if record.total == 0:
        status = BatchStatus.FAILED
        stamps = {"failed_at": record.created_at}
    elif record.cancelling_at is not None and record.cancelling_at < record.expires_at:
        stamps["cancelling_at"] = record.cancelling_at
        if frozen:
            status = BatchStatus.CANCELLED
            settled = max(record.cancelling_at, last) if last else record.cancelling_at
            stamps["cancelled_at"] = settled
        else:
            status = BatchStatus.CANCELLING
    elif frozen and (
        record.expired_at is not None or (last is not None and last >= record.expires_at)
    ):
        status = BatchStatus.EXPIRED
        stamps["expired_at"] = record.expired_at or record.expires_at
    elif frozen:
        status = BatchStatus.COMPLETED
        # last_finished_at is set by every freeze of a non-empty batch.
        completed_at = last or record.created_at
        stamps["completed_at"] = completed_at
        stamps["finalizing_at"] = completed_at
    elif c.unsettled <= 0 or record.expired_at is not None or now >= record.expires_at:
        status = BatchStatus.FINALIZING
    else:
        status = BatchStatus.IN_PROGRESS

    return BatchView(
        record=record,
        status=status,
        counts=c,
        in_progress_at=stamps.get("in_progress_at"),
        finalizing_at=stamps.get("finalizing_at"),
        completed_at=stamps.get("completed_at"),
        failed_at=stamps.get("failed_at"),
        expired_at=stamps.get("expired_at"),
        cancelling_at=stamps.get("cancelling_at"),
        cancelled_at=stamps.get("cancelled_at"),
        has_output=c.completed > 0,
        has_errors=c.failed + c.canceled > 0,
        escalated_at=record.escalated_at,
    )


def needs_freeze(view: BatchView) -> bool:
    """Whether the store should freeze this batch's counts now.

    True when the counts are not frozen yet, nothing is unsettled and they add up to the
    batch total (``freeze_batch.sql`` checks the same in its statement).
    """
    return (
        view.record.frozen_counts is None
        and view.counts.unsettled == 0
        and recount_consistent(view.record, view.counts)
    )


def check_input_file(file_id: UUID, purpose: FilePurpose, line_count: int) -> None:
    """What the stored input file of a new batch must be (the engine checks the request
    itself, ``fusillade/engine/_rules.py``; a repository checks this, and
    ``endpoint_mismatch``, in the transaction that creates the batch).

    Raises:
        ValidationError: the file is not an input file, or has no lines.
    """
    if purpose is not FilePurpose.BATCH:
        raise ValidationError(f"file {file_id} is not a batch input file", param="input_file_id")
    if line_count == 0:
        raise ValidationError("the input file has no requests", param="input_file_id")


def endpoint_mismatch(line_number: int, path: str, endpoint: str) -> ValidationError:
    """The error for the first line of an input file whose url is not the batch endpoint."""
    return ValidationError(
        f"line {line_number}: url {path!r} does not match the batch endpoint {endpoint!r}",
        param="endpoint",
    )


# A retry needs the input file's templates; a deleted (or expired) input file's content
# is removed by maintenance once no unfinished batch reads it (docs/semantics.md).
INPUT_GONE = "the batch's input file was deleted or has expired; it cannot be retried"


def retry_refusal(record: BatchRecord) -> str | None:
    """Why a retry of this batch must wait, or ``None`` when it may run now.

    A retry waits while a cancel or an expiry is being applied (the ``cancelling_at`` or
    ``expired_at`` stamp is set and the counts are not frozen yet): it would clear the stamp
    while daemons abort rows and sweeps cancel them, undoing what the user was told. Once
    the batch is ``cancelled`` or ``expired`` (frozen) it may be retried. ``retry_batch.sql``
    checks the same in the statement that writes, so a stamp that lands after this check
    still stops the retry.
    """
    if record.frozen_counts is not None:
        return None
    if record.cancelling_at is not None:
        return "the batch is still cancelling; retry once it is cancelled"
    if record.expired_at is not None:
        return "the batch is still expiring; retry once it has expired"
    return None


def freeze(
    record: BatchRecord, counts: RequestCounts, last_finished_at: datetime | None
) -> BatchRecord:
    """``record`` with ``counts`` frozen: the pure twin of ``freeze_batch.sql``.

    Raises:
        ValueError: requests are unsettled, or the counts do not add up to the total.
    """
    if counts.unsettled != 0 or not recount_consistent(record, counts):
        raise ValueError(f"cannot freeze batch {record.id} with counts {counts}")
    return attrs.evolve(record, frozen_counts=counts, last_finished_at=last_finished_at)


def recount_consistent(record: BatchRecord, counts: RequestCounts) -> bool:
    """Whether ``counts`` are non-negative, sum to their total, and that is the batch's."""
    return counts.is_consistent and counts.total == record.total


def count_states(states: Iterable[RequestState]) -> RequestCounts:
    """Counts of a batch from its requests' states (claimed and processing are in progress)."""
    tally = dict.fromkeys(RequestState, 0)
    for state in states:
        tally[state] += 1
    return RequestCounts(
        total=sum(tally.values()),
        pending=tally[RequestState.PENDING],
        in_progress=tally[RequestState.CLAIMED] + tally[RequestState.PROCESSING],
        completed=tally[RequestState.COMPLETED],
        failed=tally[RequestState.FAILED],
        canceled=tally[RequestState.CANCELED],
    )


@attrs.frozen
class ClaimableBatch:
    """A batch a claim may take rows from, as the claim loop and maintenance see it
    (``Repository.claimable_batches``): not frozen, cancelled or expired, deadline not
    passed, and something pending.

    ``pending`` counts rows backing off too (an upper bound of what is due now);
    ``finished`` is completed + failed + canceled; ``total - pending - finished`` are in
    flight. ``window`` is the batch's ``completion_window`` as a duration.
    """

    id: UUID
    owner: str
    models: tuple[str, ...]
    expires_at: datetime
    window: timedelta
    escalated: bool
    pending: int
    finished: int
    total: int


def window_of(completion_window: str, created_at: datetime, expires_at: datetime) -> timedelta:
    """A stored batch's ``completion_window`` as a duration (``parse_completion_window``).

    Every stored value was parsed once when its batch was created; a value this version
    cannot read (a row from another version) falls back to the batch's first deadline
    span, ``expires_at - created_at`` (a retry may have moved ``expires_at`` since), so a
    read never fails on an odd row.
    """
    try:
        return parse_completion_window(completion_window)
    except ValidationError:
        return max(expires_at - created_at, timedelta(0))
