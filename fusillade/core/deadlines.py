"""Will a batch finish within its window at the rate it is finishing requests?

Theory of operation
-------------------
Maintenance samples each claimable batch's finished count (completed + failed +
canceled) over time; ``will_miss`` takes the count finished over the last stretch of
samples as the batch's rate and asks whether what remains takes longer than the time
left. A batch that will miss is escalated: the claim loop takes its rows ahead of its
turn (``fusillade.runtime.claiming``), and the batch object shows ``escalated_at``.

A rate of zero (nothing finished lately: not started yet, or starved by other batches)
says nothing about how long the rest takes; such a batch is escalated only once less
than half its window is left, so a new batch waiting its turn behind others is not
escalated at once, and one that has waited half its window is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from uuid import UUID

import attrs

from fusillade.core.batches import ClaimableBatch


def will_miss(
    *,
    remaining: int,
    finished_recently: int,
    over: timedelta,
    time_left: timedelta,
    window: timedelta,
) -> bool:
    """Whether ``remaining`` requests, finished at ``finished_recently`` per ``over``, take
    longer than ``time_left``.

    Args:
        remaining: requests of the batch not finished yet (pending or in flight).
        finished_recently: requests it finished during the last ``over``.
        over: the stretch of time the rate is measured over (positive).
        time_left: until the batch's deadline (negative once past it).
        window: the batch's completion window (for the zero-rate rule).

    Returns:
        False when nothing remains. With no request finished lately, True when less than
        half of ``window`` is left. Else True when ``remaining / rate > time_left``, with
        ``rate = finished_recently / over`` (compared exactly, without division).

    Raises:
        ValueError: ``remaining`` or ``finished_recently`` is negative, or ``over`` is not
            positive.

    >>> will_miss(remaining=100, finished_recently=10, over=timedelta(minutes=1),
    ...           time_left=timedelta(minutes=5), window=timedelta(hours=1))
    True
    """
    if remaining < 0 or finished_recently < 0:
        raise ValueError(f"counts must not be negative: {remaining=}, {finished_recently=}")
    if over <= timedelta(0):
        raise ValueError(f"over must be positive, not {over}")
    if remaining == 0:
        return False
    if finished_recently == 0:
        return time_left * 2 < window
    # remaining / (finished_recently / over) > time_left, multiplied out
    return over * remaining > time_left * finished_recently


Sample = tuple[datetime, int]
"""When a batch was looked at, and how many of its requests had finished then."""

MIN_HISTORY = timedelta(seconds=60)
"""A batch's rate is judged only once its samples span this long: over a few seconds a
rate is mostly noise (a handful of requests in flight finishing together or not)."""

MAX_HISTORY = timedelta(minutes=10)
"""Samples older than this are dropped: the rate is the recent one, so a batch slowed
down by newer work (or sped up when it left) is judged by how it goes now."""


@attrs.frozen
class Review:
    """What ``review`` found: the samples to keep, and the escalations to change."""

    samples: dict[UUID, tuple[Sample, ...]]
    escalate: tuple[UUID, ...]
    clear: tuple[UUID, ...]


def review(
    samples: Mapping[UUID, Sequence[Sample]],
    batches: Sequence[ClaimableBatch],
    now: datetime,
) -> Review:
    """Add a sample of each claimable batch at ``now`` and judge it by ``will_miss`` over
    its samples of the last ``MAX_HISTORY``, once they span at least ``MIN_HISTORY``.

    Returns the batches to escalate (will miss, not escalated yet) and to clear
    (escalated, and would finish within half the time left at its rate): changes only.
    Batches no longer claimable lose their samples and keep their stamp (it then says
    the batch was late when last claimable).
    A batch whose finished count went down (a retry) is judged from its new count on.
    """
    kept: dict[UUID, tuple[Sample, ...]] = {}
    escalate: list[UUID] = []
    clear: list[UUID] = []
    for b in batches:
        history = [
            s for s in samples.get(b.id, ()) if s[0] >= now - MAX_HISTORY and s[1] <= b.finished
        ]
        history.append((now, b.finished))
        kept[b.id] = tuple(history)
        since, finished_then = history[0]
        if now - since < MIN_HISTORY:
            continue
        time_left = b.expires_at - now
        miss = will_miss(
            remaining=max(0, b.total - b.finished),
            finished_recently=b.finished - finished_then,
            over=now - since,
            # hysteresis: escalated, a batch finishes at its escalated rate, so judged by
            # the same test it would be cleared at once and fall behind again
            time_left=time_left / 2 if b.escalated else time_left,
            window=b.window,
        )
        if miss and not b.escalated:
            escalate.append(b.id)
        elif not miss and b.escalated:
            clear.append(b.id)
    return Review(kept, tuple(escalate), tuple(clear))
