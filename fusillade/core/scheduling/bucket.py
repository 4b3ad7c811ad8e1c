"""A token bucket that refills continuously, with time passed in.

The fill is a float: ``available(now)`` is ``min(capacity, fill + rate * elapsed)``. It may
be negative (debt, from ``force_take``): requests larger than the bucket, or usage above
the estimate that was reserved, are paid back by the refill before anything else goes.
A clock that steps backwards refills nothing (the bucket keeps the later time).
"""

from __future__ import annotations

import math

EPSILON = 1e-9
"""Slack for float rounding: ``take`` at the time ``wait_time`` named must succeed."""


class TokenBucket:
    """``capacity`` tokens at most, ``rate`` tokens per second back; starts full."""

    __slots__ = ("_capacity", "_fill", "_rate", "_stamp")

    def __init__(self, *, rate: float, capacity: float, now: float) -> None:
        self._rate = max(0.0, rate)
        self._capacity = max(0.0, capacity)
        self._fill = self._capacity
        self._stamp = now

    @property
    def rate(self) -> float:
        return self._rate

    @property
    def capacity(self) -> float:
        return self._capacity

    def _refill(self, now: float) -> None:
        if now > self._stamp:
            if self._fill < self._capacity:
                self._fill = min(self._capacity, self._fill + self._rate * (now - self._stamp))
            self._stamp = now

    def available(self, now: float) -> float:
        """Tokens in the bucket at ``now`` (negative while in debt)."""
        if now <= self._stamp or self._fill >= self._capacity:
            return self._fill
        return min(self._capacity, self._fill + self._rate * (now - self._stamp))

    def is_full(self, now: float) -> bool:
        return self.available(now) + EPSILON >= self._capacity

    def take(self, n: float, now: float) -> bool:
        """Take ``n`` tokens if the bucket holds them now; False (and nothing taken) if not."""
        self._refill(now)
        if self._fill + EPSILON >= n:
            self._fill -= n
            return True
        return False

    def force_take(self, n: float, now: float) -> None:
        """Take ``n`` tokens even if that leaves the bucket in debt."""
        self._refill(now)
        self._fill -= n

    def give(self, n: float, now: float) -> None:
        """Put ``n`` tokens back (a reservation larger than the use); never above capacity."""
        self._refill(now)
        self._fill = min(self._capacity, self._fill + max(0.0, n))

    def limit_to(self, ceiling: float, now: float) -> None:
        """Hold at most ``ceiling`` tokens now (the provider says less is left)."""
        self._refill(now)
        self._fill = min(self._fill, ceiling)

    def wait_time(self, n: float, now: float) -> float:
        """Seconds until ``take(n)`` would succeed: 0 if now, ``inf`` if never.

        Never: ``n`` above the capacity, or a rate of 0 with too little in the bucket.
        """
        missing = n - self.available(now)
        if missing <= EPSILON:
            return 0.0
        if n > self._capacity + EPSILON or self._rate <= 0.0:
            return math.inf
        return missing / self._rate

    def reconfigure(self, *, rate: float, capacity: float, now: float) -> None:
        """New rate and capacity from ``now`` on; the fill is kept, clipped to the capacity."""
        self._refill(now)
        self._rate = max(0.0, rate)
        self._capacity = max(0.0, capacity)
        self._fill = min(self._fill, self._capacity)
