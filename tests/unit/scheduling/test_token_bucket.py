"""The token bucket with explicit time."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from fusillade.core.scheduling.bucket import TokenBucket


def test_starts_full_and_refills_at_its_rate() -> None:
    bucket = TokenBucket(rate=2.0, capacity=10.0, now=100.0)
    assert bucket.available(100.0) == 10.0
    assert bucket.take(10, 100.0)
    assert not bucket.take(1, 100.0)
    assert bucket.available(101.5) == 3.0
    assert bucket.wait_time(5, 101.5) == 1.0
    assert bucket.available(200.0) == 10.0  # never above capacity


def test_force_take_makes_debt_that_the_refill_pays() -> None:
    bucket = TokenBucket(rate=1.0, capacity=4.0, now=0.0)
    bucket.force_take(10, 0.0)
    assert bucket.available(0.0) == -6.0
    assert bucket.wait_time(1, 0.0) == 7.0
    bucket.give(3, 0.0)
    assert bucket.available(0.0) == -3.0
    bucket.give(100, 0.0)
    assert bucket.available(0.0) == 4.0


def test_wait_time_without_rate_or_above_capacity_is_infinite() -> None:
    bucket = TokenBucket(rate=0.0, capacity=2.0, now=0.0)
    assert bucket.wait_time(2, 0.0) == 0.0
    assert bucket.take(2, 0.0)
    assert bucket.wait_time(1, 50.0) == math.inf
    assert TokenBucket(rate=1.0, capacity=2.0, now=0.0).wait_time(3, 0.0) == math.inf


def test_reconfigure_keeps_the_fill_clipped() -> None:
    bucket = TokenBucket(rate=1.0, capacity=10.0, now=0.0)
    assert bucket.take(4, 0.0)
    bucket.reconfigure(rate=5.0, capacity=20.0, now=0.0)
    assert bucket.available(0.0) == 6.0
    assert bucket.available(1.0) == 11.0
    bucket.reconfigure(rate=5.0, capacity=3.0, now=1.0)
    assert bucket.available(1.0) == 3.0


def test_a_clock_stepping_back_refills_nothing() -> None:
    bucket = TokenBucket(rate=1.0, capacity=10.0, now=10.0)
    assert bucket.take(10, 10.0)
    assert bucket.available(5.0) == 0.0
    assert not bucket.take(1, 5.0)
    assert bucket.available(11.0) == 1.0


ops = st.lists(
    st.tuples(
        st.sampled_from(["take", "force", "give", "wait"]),
        st.floats(min_value=0.0, max_value=50.0),
        st.floats(min_value=0.0, max_value=5.0),
    ),
    max_size=40,
)


@given(
    st.floats(min_value=0.0, max_value=100.0),
    st.floats(min_value=0.5, max_value=100.0),
    ops,
)
def test_never_above_capacity_and_wait_time_is_honest(
    rate: float, capacity: float, steps: list[tuple[str, float, float]]
) -> None:
    bucket = TokenBucket(rate=rate, capacity=capacity, now=0.0)
    now = 0.0
    for op, n, dt in steps:
        now += dt
        before = bucket.available(now)
        if op == "take":
            assert bucket.take(n, now) == (before >= n - 1e-9)
        elif op == "force":
            bucket.force_take(n, now)
        elif op == "give":
            bucket.give(n, now)
        else:
            wait = bucket.wait_time(n, now)
            if wait == 0.0:
                assert before >= n - 1e-9
            elif math.isfinite(wait):
                assert bucket.take(n, now + wait)
                now += wait
        assert bucket.available(now) <= capacity
