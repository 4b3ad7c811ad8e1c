"""Budgets: pacing inside every window, reservations that settle, learning, slow start.

The bounds are the contract (fusillade/core/scheduling/budget.py's docstring), written
here from the configured numbers, never from the implementation's arithmetic.
"""

from __future__ import annotations

import math
from collections import deque

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fusillade.core.scheduling.budget import UNLIMITED, Budget, BudgetLimits
from fusillade.core.scheduling.headers import ProviderLimits, Window


def most_in_window(times: list[float], width: float) -> int:
    """The most start times in any half-open window [t, t + width)."""
    best = 0
    window: deque[float] = deque()
    for t in sorted(times):
        window.append(t)
        while window[0] <= t - width:
            window.popleft()
        best = max(best, len(window))
    return best


def run(budget: Budget, arrivals: list[tuple[float, int]], *, until: float) -> list[float]:
    """Start requests as soon as the budget allows; each finishes at once (200, no usage).

    Wakes at each arrival and at each ``next_change`` (which must be honest: admit
    grows by then). Returns the start times.
    """
    starts: list[float] = []
    pending = 0
    events = sorted(arrivals)
    now = 0.0
    i = 0
    while now <= until:
        while i < len(events) and events[i][0] <= now:
            pending += events[i][1]
            i += 1
        admitted = budget.admit(now, tokens_per_request=1)
        for _ in range(min(admitted, pending)):
            budget.start(now)
            starts.append(now)
            budget.finish(now, reserved=0, used=None, status=200, limits=None)
        pending -= min(admitted, pending)
        wake = [events[i][0]] if i < len(events) else []
        if pending:
            change = budget.next_change(now)
            if change is not None:
                assert change > now
                assert budget.admit(change, tokens_per_request=1) > 0
                wake.append(change)
        if not wake:
            break
        now = min(wake)
    return starts


arrival_lists = st.lists(
    st.tuples(st.floats(min_value=0.0, max_value=180.0), st.integers(min_value=1, max_value=400)),
    min_size=1,
    max_size=30,
)


@given(
    rpm=st.integers(min_value=1, max_value=3000),
    burst=st.floats(min_value=0.01, max_value=0.5),
    fraction=st.sampled_from([1.0, 0.5, 1 / 3, 0.1]),
    arrivals=arrival_lists,
)
def test_never_over_budget_in_any_window(
    rpm: int, burst: float, fraction: float, arrivals: list[tuple[float, int]]
) -> None:
    budget = Budget(BudgetLimits(rpm=rpm), now=0.0, burst=burst)
    budget.set_fraction(fraction, 0.0)
    starts = run(budget, arrivals, until=400.0)
    allowed = rpm * fraction
    # A request has to go some time: a budget below one per minute still starts one.
    assert most_in_window(starts, 60.0) <= max(1, math.floor(allowed + 1e-9))
    assert most_in_window(starts, 1.0) <= math.ceil(allowed / 60 * (1 + burst)) + 1


def test_a_backlog_goes_at_the_budgets_pace() -> None:
    budget = Budget(BudgetLimits(rpm=600), now=0.0)
    starts = run(budget, [(0.0, 2000)], until=120.0)
    # 600 rpm = 10 per second: about 1,200 in two minutes, never a burst of hundreds.
    assert 1150 <= len(starts) <= 1200
    assert most_in_window(starts, 1.0) <= 12


@given(
    tpm=st.integers(min_value=100, max_value=200_000),
    sizes=st.lists(st.integers(min_value=1, max_value=20_000), min_size=1, max_size=200),
    gaps=st.lists(st.floats(min_value=0.0, max_value=5.0), min_size=1, max_size=200),
)
def test_tokens_never_over_budget_beyond_one_request(
    tpm: int, sizes: list[int], gaps: list[float]
) -> None:
    """Tokens reserved in any 60 s window <= tpm + the largest request (one oversize
    request may go when the bucket is full)."""
    budget = Budget(BudgetLimits(tpm=tpm), now=0.0)
    now = 0.0
    reserved_at: list[tuple[float, int]] = []
    for k, size in enumerate(sizes):
        now += gaps[k % len(gaps)]
        wait = budget.reserve_wait(size, now)
        assert wait < math.inf
        now += wait
        assert budget.reserve(size, now)
        reserved_at.append((now, size))
    for i, (t, _) in enumerate(reserved_at):
        in_window = sum(s for u, s in reserved_at[i:] if u < t + 60.0)
        assert in_window <= tpm + max(sizes) + 1e-6


finishes = st.tuples(
    st.sampled_from([200, 200, 429, 500, None]),
    st.none() | st.integers(min_value=0, max_value=5_000),
)


@given(
    tpm=st.integers(min_value=100, max_value=100_000),
    steps=st.lists(
        st.tuples(st.integers(min_value=1, max_value=3_000), finishes, st.booleans()),
        max_size=60,
    ),
)
def test_reservations_always_settle(
    tpm: int, steps: list[tuple[int, tuple[int | None, int | None], bool]]
) -> None:
    budget = Budget(BudgetLimits(tpm=tpm), now=0.0)
    outstanding: list[int] = []
    now = 0.0
    capacity_seen = 0.0
    for size, (status, used), settle_one in steps:
        now += 0.5
        budget.start(now)
        if budget.reserve(size, now):
            outstanding.append(size)
        else:
            budget.finish(now, reserved=0, used=None, status=None, limits=None)
        if settle_one and outstanding:
            budget.finish(now, reserved=outstanding.pop(0), used=used, status=status, limits=None)
        available = budget.available_tokens(now)
        assert available is not None
        capacity_seen = max(capacity_seen, available)
        assert budget.snapshot(now).reserved_tokens == sum(outstanding)
    for size in outstanding:
        budget.finish(now, reserved=size, used=size // 2, status=200, limits=None)
    state = budget.snapshot(now)
    assert state.reserved_tokens == 0
    assert state.in_flight == 0
    # The bucket never holds more than a pacing burst: tpm * 0.1 / 60, at least 2 (the
    # budgets here are >= 100 a minute)
    assert capacity_seen <= max(2.0, tpm * 0.1 / 60) + 1e-9


def test_a_429_gives_the_reservation_back_and_unknown_usage_keeps_it() -> None:
    budget = Budget(BudgetLimits(tpm=60_000), now=0.0)  # bucket of 100 tokens
    assert budget.reserve(80, 0.0)
    budget.finish(0.0, reserved=80, used=None, status=429, limits=None)
    assert budget.available_tokens(0.0) == pytest.approx(100)
    assert budget.reserve(80, 0.0)
    budget.finish(0.0, reserved=80, used=None, status=500, limits=None)
    assert budget.available_tokens(0.0) == pytest.approx(20)
    assert budget.reserve(20, 0.0)
    budget.finish(0.0, reserved=20, used=5, status=200, limits=None)
    assert budget.available_tokens(0.0) == pytest.approx(15)


def test_a_request_larger_than_the_bucket_goes_when_it_is_full() -> None:
    budget = Budget(BudgetLimits(tpm=60_000), now=0.0)  # bucket of 100 tokens
    assert budget.admit(0.0, tokens_per_request=500) == 1
    assert budget.reserve(500, 0.0)
    assert budget.admit(0.0, tokens_per_request=500) == 0
    assert budget.throttle(0.0) == "tpm"
    # ~998 tokens a second back: after 0.1 s the debt of 400 is not paid yet.
    assert not budget.reserve(500, 0.1)
    wait = budget.reserve_wait(500, 0.1)
    assert 0 < wait < 0.5
    assert budget.reserve(500, 0.1 + wait)


# --- learned from headers -------------------------------------------------------------


def openai(limit: int, remaining: int, reset: float = 1.0) -> ProviderLimits:
    return ProviderLimits(requests=Window(limit, remaining, reset), tokens=None)


@given(
    limit=st.integers(min_value=1, max_value=100_000),
    share=st.floats(min_value=0.1, max_value=1.0),
    answers=st.integers(min_value=1, max_value=10),
)
def test_learned_limit_is_limit_times_share(limit: int, share: float, answers: int) -> None:
    budget = Budget(BudgetLimits(share=share), now=0.0)
    for k in range(answers):
        budget.start(float(k))
        budget.finish(float(k), reserved=0, used=None, status=200, limits=openai(limit, limit))
    state = budget.snapshot(float(answers))
    assert state.learned
    assert state.rpm == pytest.approx(limit * share)


def test_a_lower_configured_limit_wins_over_the_learned_one() -> None:
    budget = Budget(BudgetLimits(rpm=100), now=0.0)
    budget.start(0.0)
    budget.finish(0.0, reserved=0, used=None, status=200, limits=openai(10_000, 10_000))
    assert budget.snapshot(0.0).rpm == 100
    budget.start(0.0)
    budget.finish(0.0, reserved=0, used=None, status=200, limits=openai(50, 50))
    assert budget.snapshot(0.0).rpm == pytest.approx(45)


def test_learned_tokens_limit() -> None:
    budget = Budget(BudgetLimits(), now=0.0)
    limits = ProviderLimits(requests=None, tokens=Window(200_000, 200_000, 1.0))
    budget.finish(0.0, reserved=0, used=None, status=200, limits=limits)
    assert budget.snapshot(0.0).tpm == pytest.approx(180_000)


def test_low_remaining_holds_back_and_zero_remaining_pauses_until_reset() -> None:
    budget = Budget(BudgetLimits(), now=0.0)
    budget.start(0.0)
    # 6,000 rpm learned: 5,400 with share 0.9, a bucket of 9. 600 remaining is the
    # 10 % left to others: nothing for us now.
    budget.finish(0.0, reserved=0, used=None, status=200, limits=openai(6000, 600))
    assert budget.admit(0.0, tokens_per_request=1) == 0
    assert budget.throttle(0.0) == "rpm"
    assert budget.admit(1.0, tokens_per_request=1) >= 1
    budget.start(1.0)
    budget.finish(1.0, reserved=0, used=None, status=429, limits=openai(6000, 0, reset=5.0))
    assert budget.admit(5.9, tokens_per_request=1) == 0
    assert budget.next_change(5.9) == pytest.approx(6.0)
    assert budget.admit(6.0, tokens_per_request=1) >= 1


# --- AIMD without headers ---------------------------------------------------------------


def started_at(budget: Budget, rate_per_second: int, seconds: int) -> float:
    """Start (and finish, 200) ``rate_per_second`` requests each second; the end time."""
    for s in range(seconds):
        for k in range(rate_per_second):
            t = s + (k + 1) / rate_per_second  # in (0, seconds]
            budget.start(t)
            budget.finish(t, reserved=0, used=None, status=200, limits=None)
    return float(seconds)


@given(rate=st.integers(min_value=1, max_value=100))
def test_a_429_halves_the_rate_started(rate: int) -> None:
    budget = Budget(BudgetLimits(), now=0.0)
    now = started_at(budget, rate, 10)
    budget.finish(now, reserved=0, used=None, status=429, limits=None)
    state = budget.snapshot(now)
    # ``rate`` per second over the last 10 s is rate * 60 rpm: half of it.
    assert state.rpm == pytest.approx(rate * 60 / 2)
    assert not state.learned


@given(rate=st.integers(min_value=1, max_value=100), second_429=st.booleans())
def test_without_429_the_estimate_probes_up_and_is_dropped(rate: int, second_429: bool) -> None:
    budget = Budget(BudgetLimits(), now=0.0)
    now = started_at(budget, rate, 10)
    budget.finish(now, reserved=0, used=None, status=429, limits=None)
    if second_429:  # the rest of the same burst: no further halving of a fresh estimate
        budget.finish(now, reserved=0, used=None, status=429, limits=None)
    low = budget.snapshot(now).rpm
    assert low is not None
    later = budget.snapshot(now + 1.0).rpm
    assert later is not None and later >= low + 1.0
    # The estimate grows by at least 5 % of itself (and 1 rpm) a second: doubled, and
    # dropped, within 20 s. Never stuck low.
    assert budget.snapshot(now + 20.001).rpm is None
    assert budget.admit(now + 20.001, tokens_per_request=1) == UNLIMITED


def test_repeated_429s_keep_halving() -> None:
    budget = Budget(BudgetLimits(), now=0.0)
    now = started_at(budget, 10, 10)  # 600 rpm
    budget.finish(now, reserved=0, used=None, status=429, limits=None)
    assert budget.snapshot(now).rpm == pytest.approx(300)
    t = now
    for _ in range(20):  # 10 s at 2 per second
        t += 0.5
        budget.start(t)
        budget.finish(t, reserved=0, used=None, status=200, limits=None)
    budget.finish(t, reserved=0, used=None, status=429, limits=None)
    assert budget.snapshot(t).rpm == pytest.approx(20 * 6 / 2)


# --- slow start -------------------------------------------------------------------------


@given(
    slow_start=st.integers(min_value=1, max_value=16),
    rounds=st.lists(st.booleans(), min_size=1, max_size=30),
)
def test_slow_start_until_the_first_answer(slow_start: int, rounds: list[bool]) -> None:
    budget = Budget(BudgetLimits(max_in_flight=100), now=0.0, slow_start=slow_start)
    in_flight = 0
    for k, one_fails in enumerate(rounds):
        now = float(k)
        for _ in range(budget.admit(now, tokens_per_request=1)):
            budget.start(now)
            in_flight += 1
        assert in_flight <= slow_start
        if one_fails and in_flight:  # no answer (a transport error): slow start goes on
            budget.finish(now, reserved=0, used=None, status=None, limits=None)
            in_flight -= 1
    assert budget.snapshot(100.0).max_in_flight == slow_start
    budget.start(100.0)
    budget.finish(100.0, reserved=0, used=None, status=200, limits=None)
    assert budget.snapshot(100.0).max_in_flight == 100
    assert budget.admit(100.0, tokens_per_request=1) == 100 - budget.snapshot(100.0).in_flight


def test_slow_start_is_reported_and_configured_rates_skip_it() -> None:
    budget = Budget(BudgetLimits(), now=0.0, slow_start=2)
    budget.start(0.0)
    budget.start(0.0)
    assert budget.admit(0.0, tokens_per_request=1) == 0
    assert budget.throttle(0.0) == "slow_start"
    assert budget.next_change(0.0) is None
    configured = Budget(BudgetLimits(rpm=60_000), now=0.0, slow_start=2)
    assert configured.admit(0.0, tokens_per_request=1) > 2


def test_max_in_flight_and_fraction() -> None:
    budget = Budget(BudgetLimits(max_in_flight=10, rpm=6000), now=0.0)
    budget.set_fraction(1 / 3, 0.0)
    state = budget.snapshot(0.0)
    assert state.max_in_flight == 4  # ceil(10 / 3)
    assert state.rpm == pytest.approx(2000)
    for _ in range(4):
        budget.start(0.0)
    assert budget.admit(1.0, tokens_per_request=1) == 0
    assert budget.throttle(1.0) == "max_in_flight"
    assert budget.next_change(1.0) is None
