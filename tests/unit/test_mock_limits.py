"""The mock upstream's rate-limit accounting (``fusillade.mock_upstream._limits``), time given."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fusillade.mock_upstream._limits import Limits, RateLimiter, format_duration, token_cost


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0s"),
        (0.012, "12ms"),
        (0.0004, "1ms"),  # rounded up: a client that waits this long finds it done
        (0.999, "999ms"),
        (1.0, "1s"),
        (1.5, "1.5s"),
        (20.0, "20s"),
        (59.99, "59.99s"),
        (60.0, "1m0s"),
        (90.5, "1m30.5s"),
        (360.0, "6m0s"),
        (3600.0, "1h0m0s"),
        (3723.25, "1h2m3.25s"),
    ],
)
def test_durations_are_formatted_as_go_does(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_token_cost() -> None:
    assert token_cost(0, None) == 16
    assert token_cost(1, None) == 17
    assert token_cost(8, 100) == 102
    assert token_cost(9, 100) == 103


def test_too_large_never_fits_and_takes_nothing() -> None:
    limiter = RateLimiter()
    limits = Limits(tpm=100)
    refused = limiter.admit(None, limits, 101, now=0.0)
    assert refused.refusal is not None
    assert refused.refusal.retry_after is None
    assert refused.tokens is not None
    assert refused.tokens.remaining == 100
    assert limiter.admit(None, limits, 100, now=0.0).refusal is None  # the whole bucket, alone


def test_max_in_flight_frees_when_finished() -> None:
    limiter = RateLimiter()
    limits = Limits(max_in_flight=1)
    assert limiter.admit("m", limits, 1, now=0.0).refusal is None
    refused = limiter.admit("m", limits, 1, now=0.0).refusal
    assert refused is not None
    assert refused.cause == "max_in_flight"
    assert limiter.admit(None, limits, 1, now=0.0).refusal is None  # another scope
    limiter.finished("m")
    assert limiter.admit("m", limits, 1, now=0.0).refusal is None


steps = st.lists(
    st.tuples(st.floats(0, 3, allow_nan=False), st.integers(1, 400)), min_size=1, max_size=40
)


@given(
    limit=st.integers(1, 3000),
    window=st.sampled_from([0.0, 0.5, 1.0, 2.0]),
    steps=steps,
)
def test_admissions_stay_within_the_limits_and_retry_after_is_exact(
    limit: int, window: float, steps: list[tuple[float, int]]
) -> None:
    limiter = RateLimiter()
    limits = Limits(tpm=limit, window=window)
    now = 0.0
    admitted: list[tuple[float, int]] = []
    for gap, cost in steps:
        now += gap
        decision = limiter.admit(None, limits, cost, now)
        if decision.refusal is None:
            admitted.append((now, cost))
            continue
        wait = decision.refusal.retry_after
        if wait is None:
            assert cost > limit
            continue
        assert wait > 0
        # Refused now; still refused just before the wait ends, admitted just after.
        # A refusal takes nothing, so replaying the admitted requests rebuilds this state.
        if wait > 1e-6:
            before = replay(limits, admitted)
            assert before.admit(None, limits, cost, now + wait - 1e-6).refusal is not None
        after = replay(limits, admitted)
        assert after.admit(None, limits, cost, now + wait + 1e-9).refusal is None
    # The bucket: never more than the limit plus what refilled since the start.
    for i, (start, _) in enumerate(admitted):
        taken = sum(c for t, c in admitted[i:])
        assert taken <= limit + (admitted[-1][0] - start) * limit / 60 + 1e-6
    # The short window: at most its share, unless one request had it to itself.
    if window > 0:
        share = math.ceil(limit / 60 * window)
        for t, _ in admitted:
            inside = [c for u, c in admitted if t - window + 1e-6 < u <= t]  # edges: float
            assert sum(inside) <= share or len(inside) == 1


def replay(limits: Limits, admitted: list[tuple[float, int]]) -> RateLimiter:
    limiter = RateLimiter()
    for when, cost in admitted:
        assert limiter.admit(None, limits, cost, when).refusal is None
    return limiter
