"""Additive increase, multiplicative decrease: a request-rate estimate driven by 429s.

For an upstream that answers 429 without rate-limit headers (``budget.py`` keeps one per
budget, and only then). A 429 sets the estimate to half the rate started over the last
``AIMD_WINDOW`` seconds; every second without one adds ``AIMD_STEP`` of that base (at
least ``AIMD_MIN_RPM``); at ``AIMD_DROP`` times the base the estimate is dropped, so the
budget probes upwards instead of starving for lack of 429s.
"""

from __future__ import annotations

import attrs

AIMD_WINDOW = 10.0
"""Seconds of start history behind the rate a 429 halves."""
AIMD_MIN_RPM = 1.0
"""The estimate never goes below this."""
AIMD_STEP = 0.05
"""Additive increase per second without a 429, as a part of the estimate at the last
decrease (at least ``AIMD_MIN_RPM``)."""
AIMD_DROP = 2.0
"""The AIMD limit is dropped once the estimate reaches this multiple of its base."""


@attrs.define
class Aimd:
    """The request-rate estimate of a budget that learns from 429s alone (no headers)."""

    base: float  # rpm at the last decrease
    since: float  # time of the last decrease

    def step(self) -> float:
        return max(AIMD_MIN_RPM, AIMD_STEP * self.base)

    def estimate(self, now: float) -> float:
        return self.base + self.step() * max(0.0, now - self.since)

    def drops_at(self) -> float:
        return self.since + (AIMD_DROP - 1.0) * self.base / self.step()
