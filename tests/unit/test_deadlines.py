"""``will_miss``: hand-worked examples, then properties over random inputs; ``review``:
hand-worked examples."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fusillade.core.batches import ClaimableBatch
from fusillade.core.deadlines import review, will_miss

SECOND = timedelta(seconds=1)
MIN = timedelta(minutes=1)
HOUR = timedelta(hours=1)


@pytest.mark.parametrize(
    ("remaining", "finished", "over", "left", "window", "miss"),
    [
        # 10 a minute: 100 left take 10 minutes
        (100, 10, MIN, timedelta(minutes=11), HOUR, False),
        (100, 10, MIN, timedelta(minutes=10), HOUR, False),  # exactly in time
        (100, 10, MIN, timedelta(minutes=9), HOUR, True),
        # 30 over 2 minutes is 15 a minute: 1,000 left take 66.7 minutes
        (1000, 30, 2 * MIN, timedelta(minutes=67), 2 * HOUR, False),
        (1000, 30, 2 * MIN, timedelta(minutes=66), 2 * HOUR, True),
        # nothing left: never late, even past the deadline
        (0, 0, MIN, -MIN, HOUR, False),
        # nothing finished lately: late once less than half the window is left
        (5, 0, MIN, timedelta(minutes=31), HOUR, False),
        (5, 0, MIN, timedelta(minutes=30), HOUR, False),
        (5, 0, MIN, timedelta(minutes=29), HOUR, True),
        # past the deadline with work left
        (1, 1000, MIN, -timedelta(seconds=1), HOUR, True),
    ],
)
def test_examples(
    remaining: int,
    finished: int,
    over: timedelta,
    left: timedelta,
    window: timedelta,
    miss: bool,
) -> None:
    got = will_miss(
        remaining=remaining, finished_recently=finished, over=over, time_left=left, window=window
    )
    assert got is miss


@pytest.mark.parametrize(
    ("remaining", "finished", "over"), [(-1, 0, MIN), (0, -1, MIN), (1, 1, timedelta(0))]
)
def test_refuses_nonsense(remaining: int, finished: int, over: timedelta) -> None:
    with pytest.raises(ValueError, match="must"):
        will_miss(
            remaining=remaining, finished_recently=finished, over=over, time_left=MIN, window=HOUR
        )


counts = st.integers(0, 10**7)
spans = st.timedeltas(min_value=timedelta(seconds=1), max_value=timedelta(days=3))
lefts = st.timedeltas(min_value=-timedelta(days=1), max_value=timedelta(days=3))


@given(remaining=counts, more=st.integers(1, 1000), finished=counts, over=spans, left=lefts,
       window=spans)  # fmt: skip
def test_more_work_is_never_less_late(
    remaining: int, more: int, finished: int, over: timedelta, left: timedelta, window: timedelta
) -> None:
    before = will_miss(
        remaining=remaining, finished_recently=finished, over=over, time_left=left, window=window
    )
    after = will_miss(
        remaining=remaining + more,
        finished_recently=finished,
        over=over,
        time_left=left,
        window=window,
    )
    assert after or not before


@given(remaining=counts, finished=st.integers(1, 10**7), faster=st.integers(1, 1000),
       over=spans, left=lefts, window=spans)  # fmt: skip
def test_a_faster_rate_is_never_more_late(
    remaining: int,
    finished: int,
    faster: int,
    over: timedelta,
    left: timedelta,
    window: timedelta,
) -> None:
    slow = will_miss(
        remaining=remaining, finished_recently=finished, over=over, time_left=left, window=window
    )
    fast = will_miss(
        remaining=remaining,
        finished_recently=finished + faster,
        over=over,
        time_left=left,
        window=window,
    )
    assert slow or not fast


@given(remaining=counts, finished=counts, over=spans, left=lefts, less=spans, window=spans)
def test_less_time_is_never_less_late(
    remaining: int, finished: int, over: timedelta, left: timedelta, less: timedelta,
    window: timedelta,
) -> None:  # fmt: skip
    roomy = will_miss(
        remaining=remaining, finished_recently=finished, over=over, time_left=left, window=window
    )
    tight = will_miss(
        remaining=remaining,
        finished_recently=finished,
        over=over,
        time_left=left - less,
        window=window,
    )
    assert tight or not roomy


@given(finished=counts, over=spans, left=lefts, window=spans)
def test_nothing_remaining_is_never_late(
    finished: int, over: timedelta, left: timedelta, window: timedelta
) -> None:
    assert not will_miss(
        remaining=0, finished_recently=finished, over=over, time_left=left, window=window
    )


@given(remaining=st.integers(1, 10**7), finished=st.integers(1, 10**7), over=spans)
def test_past_the_deadline_with_work_left_is_late(
    remaining: int, finished: int, over: timedelta
) -> None:
    for left in (timedelta(0), -MIN):
        assert will_miss(
            remaining=remaining, finished_recently=finished, over=over, time_left=left, window=HOUR
        )


@given(remaining=st.integers(1, 10**6), per_second=st.integers(1, 1000), over=spans)
def test_a_rate_that_finishes_with_a_second_to_spare_is_on_time(
    remaining: int, per_second: int, over: timedelta
) -> None:
    # finished_recently chosen so the rate is exactly per_second
    finished = per_second * round(over.total_seconds())
    needed = timedelta(seconds=-(-remaining // per_second))  # whole seconds, rounded up
    assert not will_miss(
        remaining=remaining,
        finished_recently=finished,
        over=timedelta(seconds=round(over.total_seconds())),
        time_left=needed + timedelta(seconds=1),
        window=HOUR,
    )
    assert will_miss(
        remaining=remaining,
        finished_recently=finished,
        over=timedelta(seconds=round(over.total_seconds())),
        time_left=needed - timedelta(seconds=1),
        window=HOUR,
    )


# ------------------------------------------------------------------ review


def claimable(
    finished: int, *, total: int = 100, escalated: bool = False, left: timedelta = HOUR
) -> ClaimableBatch:
    return ClaimableBatch(
        id=BATCH, owner="o", models=("m",), expires_at=NOW + left, window=2 * HOUR,
        escalated=escalated, pending=total - finished, finished=finished, total=total,
    )  # fmt: skip


BATCH = UUID(int=1)
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_review_waits_for_a_minute_of_samples() -> None:
    # nothing finished in 59 s, 30 min left of a 2 h window: late by the zero-rate
    # rule, but 59 s of samples is too short to judge
    first = review({}, [claimable(0, left=timedelta(minutes=30))], NOW - timedelta(seconds=59))
    assert (first.escalate, first.clear) == ((), ())
    got = review(first.samples, [claimable(0, left=timedelta(minutes=30))], NOW)
    assert (got.escalate, got.clear) == ((), ())
    assert got.samples[BATCH] == ((NOW - timedelta(seconds=59), 0), (NOW, 0))
    later = review(got.samples, [claimable(0, left=timedelta(minutes=30))], NOW + SECOND)
    assert later.escalate == (BATCH,)


def test_review_escalates_clears_with_hysteresis_and_forgets() -> None:
    start = {BATCH: ((NOW - 2 * MIN, 0),)}
    # 10 finished in 2 min (5 a minute): 90 left take 18 min
    assert review(start, [claimable(10, left=17 * MIN)], NOW).escalate == (BATCH,)
    assert review(start, [claimable(10, left=19 * MIN)], NOW).escalate == ()
    # escalated: cleared only once the rest takes at most half the time left
    on = [claimable(10, left=35 * MIN, escalated=True)]
    assert review(start, on, NOW).clear == ()
    off = [claimable(10, left=37 * MIN, escalated=True)]
    assert review(start, off, NOW).clear == (BATCH,)
    # samples older than 10 minutes are dropped; a batch no longer claimable is forgotten
    old = {BATCH: ((NOW - 11 * MIN, 0), (NOW - 2 * MIN, 10))}
    assert review(old, [claimable(10)], NOW).samples[BATCH] == ((NOW - 2 * MIN, 10), (NOW, 10))
    assert review(old, [], NOW).samples == {}
