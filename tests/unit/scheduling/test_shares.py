"""A daemon's part of a shared budget: alone all of it, else 1/N once its lease is a
heartbeat old, nothing before (so the parts never add up to more than the budget)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from fusillade.core.scheduling.shares import fraction_of

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_alone_a_daemon_has_the_whole_budget_at_once() -> None:
    assert fraction_of(1, T0, T0, 5.0) == 1.0


def test_a_new_lease_among_others_waits_one_heartbeat() -> None:
    assert fraction_of(3, T0, T0 + timedelta(seconds=4.9), 5.0) == 0.0
    assert fraction_of(3, T0, T0 + timedelta(seconds=5), 5.0) == 1 / 3


@given(
    holders=st.integers(1, 50),
    ages=st.lists(st.floats(0, 100), min_size=1, max_size=50),
)
def test_parts_never_add_up_to_more_than_the_budget(holders: int, ages: list[float]) -> None:
    # whatever each holder's lease age, the parts they compute for the same N sum to <= 1
    ages = ages[:holders]
    parts = [fraction_of(holders, T0, T0 + timedelta(seconds=a), 5.0) for a in ages]
    assert sum(parts) <= 1.0 + 1e-9
