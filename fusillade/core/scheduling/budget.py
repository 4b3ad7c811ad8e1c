"""One scope's budget (an upstream, or an (upstream, model)): who may start, and when.

Theory of operation
-------------------
Three limits, each optional: requests in flight, requests per minute (rpm) and tokens
per minute (tpm). ``admit`` says how many requests may start now; ``start`` records one;
``reserve`` takes a request's estimated tokens before it is sent; ``finish`` settles it.

Pacing, not bursts. Providers enforce per-minute limits over short windows (about a
second), so a per-minute budget ``B`` is a token bucket with capacity
``C = max(2, B * burst / 60)`` (``max(1, B / 2)`` under 4 per minute) and refill
``(B - C) / 60`` per second: in any 60 s window at most ``C + (B - C) = B`` requests
(tokens) start, and in any 1 s window at most ``C + B / 60``. A budget under 2 rpm refills at
``B / 120`` per second instead (so it never stops), which still lets at most one request
start per minute when ``B < 2``.

The budget ``B``: the configured value, else the learned limit times ``share`` (the
configured value wins when lower); either times ``fraction`` (this daemon's part of the
deployment's budget). Configured limits are used as given.

Learned from headers (``finish(limits=...)``): a requests (tokens) limit sets the learned
rpm (tpm). ``remaining`` caps the bucket at ``(remaining - (1 - share) * limit) *
fraction``: never more than the provider says is left (a low remaining means other
traffic on the account). ``remaining == 0`` with a reset: nothing starts until then.

No headers: 429s drive AIMD on the request rate (``aimd.py``). On a 429
the estimate becomes ``max(1 rpm, min(estimate, half the rate this budget started over
the last AIMD_WINDOW seconds))``. Without a 429 it grows by
``max(1 rpm, AIMD_STEP * base)`` per second (``base``: the estimate at the last
decrease), and once it reaches ``AIMD_DROP * base`` the AIMD limit is dropped: the budget
probes upwards instead of starving for lack of 429s. The estimate is this daemon's own
rate (not multiplied by ``fraction``). Retry-After pauses are handled by the caller.

Slow start: with no rpm or tpm configured, nothing learned and no answer yet, at most
``slow_start`` requests are in flight. The first answer (any HTTP status) ends it: its
headers set the budget, or, without headers, only ``max_in_flight`` limits.

Tokens: ``reserve`` takes the estimate (a request larger than the bucket goes when the
bucket is full, leaving debt); ``finish`` gives back ``reserved - used`` when the usage
is known (or takes the excess), all of it on a 429 (the provider did not count it), and
keeps the reservation otherwise (the provider may have counted it).
"""

from __future__ import annotations

import math
from collections import deque
from typing import Literal

import attrs

from fusillade.core.scheduling.aimd import AIMD_MIN_RPM, AIMD_WINDOW, Aimd
from fusillade.core.scheduling.bucket import EPSILON, TokenBucket
from fusillade.core.scheduling.headers import ProviderLimits, Window

UNLIMITED = 1_000_000
"""What ``admit`` answers when nothing limits."""

Throttle = Literal["max_in_flight", "rpm", "tpm", "slow_start"]


@attrs.frozen
class BudgetLimits:
    """What the operator configured for one scope."""

    max_in_flight: int | None = None
    rpm: int | None = None
    tpm: int | None = None
    share: float = 0.9
    """The part of LEARNED limits fusillade may use (configured limits are used as given)."""


@attrs.frozen
class BudgetState:
    """A budget at one moment, for metrics and the progress line."""

    in_flight: int
    max_in_flight: int | None
    """The cap in force (slow start included); None: no cap."""
    rpm: float | None
    tpm: float | None
    reserved_tokens: int
    learned: bool
    throttle: Throttle | None


def bucket_shape(budget: float, burst: float) -> tuple[float, float]:
    """(capacity, refill per second) of the bucket pacing a per-minute ``budget``; room
    for two requests at least (one under 4 a minute): a full bucket of one refilled
    nothing while its claim went to the database (P9, three daemons: 5 a second of 6)."""
    capacity = max(1.0, min(2.0, budget / 2), budget * burst / 60.0)
    refill = budget - capacity if budget >= 2 * capacity else budget / 2
    return capacity, max(0.0, refill) / 60.0


class Budget:
    """One scope's budget; every method takes ``now`` (seconds, monotonic)."""

    def __init__(
        self, limits: BudgetLimits, *, now: float, burst: float = 0.1, slow_start: int = 4
    ) -> None:
        self._limits = limits
        self._burst = burst
        self._slow_start = slow_start
        self._fraction = 1.0
        self._in_flight = 0
        self._reserved = 0
        self._answered = False
        self._learned_rpm: int | None = None
        self._learned_tpm: int | None = None
        self._aimd: Aimd | None = None
        self._starts: deque[float] = deque()
        self._requests_paused_until = -math.inf
        self._tokens_paused_until = -math.inf
        self._last_request_tokens = 1.0
        self._rpm: TokenBucket | None = None
        self._tpm: TokenBucket | None = None
        self._update(now)

    # --- the effective limits ---------------------------------------------------------

    def _rpm_budget(self, now: float) -> float | None:
        candidates = []
        if self._limits.rpm is not None:
            candidates.append(self._limits.rpm * self._fraction)
        if self._learned_rpm is not None:
            candidates.append(self._learned_rpm * self._limits.share * self._fraction)
        if self._aimd is not None:
            candidates.append(self._aimd.estimate(now))
        return min(candidates) if candidates else None

    def _tpm_budget(self) -> float | None:
        candidates = []
        if self._limits.tpm is not None:
            candidates.append(self._limits.tpm * self._fraction)
        if self._learned_tpm is not None:
            candidates.append(self._learned_tpm * self._limits.share * self._fraction)
        return min(candidates) if candidates else None

    def _max_in_flight(self) -> int | None:
        caps = []
        if self._limits.max_in_flight is not None:
            caps.append(math.ceil(self._limits.max_in_flight * self._fraction))
        if self._slow_starting():
            caps.append(self._slow_start)
        return min(caps) if caps else None

    def _slow_starting(self) -> bool:
        return (
            not self._answered
            and self._limits.rpm is None
            and self._limits.tpm is None
            and self._learned_rpm is None
            and self._learned_tpm is None
        )

    def _shape(
        self, bucket: TokenBucket | None, budget: float | None, now: float
    ) -> TokenBucket | None:
        if budget is None:
            return None
        capacity, rate = bucket_shape(budget, self._burst)
        if bucket is None:
            return TokenBucket(rate=rate, capacity=capacity, now=now)
        if bucket.rate != rate or bucket.capacity != capacity:
            bucket.reconfigure(rate=rate, capacity=capacity, now=now)
        return bucket

    def _update(self, now: float) -> None:
        if self._aimd is not None and now >= self._aimd.drops_at():
            self._aimd = None
        self._rpm = self._shape(self._rpm, self._rpm_budget(now), now)
        self._tpm = self._shape(self._tpm, self._tpm_budget(), now)

    # --- the facts --------------------------------------------------------------------

    def set_fraction(self, fraction: float, now: float) -> None:
        """This daemon's part of the deployment's budget (1/N of N daemons); default 1.0."""
        self._fraction = min(1.0, max(0.0, fraction))
        self._update(now)

    def start(self, now: float) -> None:
        """One request admitted: in flight + 1, one request from the rpm bucket."""
        self._update(now)
        self._in_flight += 1
        if self._rpm is not None:
            self._rpm.force_take(1, now)
        self._starts.append(now)
        while self._starts and self._starts[0] <= now - AIMD_WINDOW:
            self._starts.popleft()

    def reserve(self, tokens: int, now: float) -> bool:
        """Take a request's estimated tokens before sending it; False: not yet.

        A request larger than the bucket goes when the bucket is full (leaving debt).
        """
        self._update(now)
        if self._tpm is not None:
            if now < self._tokens_paused_until:
                return False
            if not self._tpm.take(tokens, now):
                if tokens <= self._tpm.capacity or not self._tpm.is_full(now):
                    return False
                self._tpm.force_take(tokens, now)
        self._reserved += tokens
        return True

    def reserve_wait(self, tokens: int, now: float) -> float:
        """Seconds until ``reserve(tokens)`` would succeed (0: now)."""
        self._update(now)
        if self._tpm is None:
            return 0.0
        pause = max(0.0, self._tokens_paused_until - now)
        wait = self._tpm.wait_time(min(tokens, self._tpm.capacity), now)
        return max(pause, wait)

    def finish(
        self,
        now: float,
        *,
        reserved: int,
        used: int | None,
        status: int | None,
        limits: ProviderLimits | None,
        aimd: bool = True,
    ) -> None:
        """Settle a request: in flight - 1, its tokens settled, and what its answer taught.

        Args:
            reserved: the tokens ``reserve`` took for it (0 if none).
            used: the tokens the answer reports, if it does.
            status: the HTTP status; None when no answer came (a transport error).
            limits: the answer's rate-limit headers (``parse_limits``).
            aimd: whether a 429 may move an unlearned budget's AIMD estimate; False when
                the answer's headers state the limit (another scope learns it).
        """
        self._update(now)
        self._in_flight = max(0, self._in_flight - 1)
        self._reserved = max(0, self._reserved - reserved)
        if self._tpm is not None:
            if used is not None:
                if used <= reserved:
                    self._tpm.give(reserved - used, now)
                else:
                    self._tpm.force_take(used - reserved, now)
            elif status == 429:
                self._tpm.give(reserved, now)
        if status is not None:
            self._answered = True
        if limits is not None:
            self._learn(limits, now)
        if status == 429 and aimd and self._learned_rpm is None:
            self._decrease(now)
        self._update(now)

    def _learn(self, limits: ProviderLimits, now: float) -> None:
        if limits.requests is not None and limits.requests.limit:
            self._learned_rpm = limits.requests.limit
            self._aimd = None  # the provider says what the limit is
        if limits.tokens is not None and limits.tokens.limit:
            self._learned_tpm = limits.tokens.limit
        self._update(now)
        if limits.requests is not None:
            paused = self._clamp(self._rpm, limits.requests, self._learned_rpm, now)
            if paused is not None:
                self._requests_paused_until = max(self._requests_paused_until, paused)
        if limits.tokens is not None:
            paused = self._clamp(self._tpm, limits.tokens, self._learned_tpm, now)
            if paused is not None:
                self._tokens_paused_until = max(self._tokens_paused_until, paused)

    def _clamp(
        self, bucket: TokenBucket | None, window: Window, limit: int | None, now: float
    ) -> float | None:
        """Cap ``bucket`` at what the provider says is left; the end of a pause, if any."""
        if window.remaining is None:
            return None
        if bucket is not None:
            margin = (1.0 - self._limits.share) * (window.limit or limit or 0)
            bucket.limit_to(max(0.0, (window.remaining - margin) * self._fraction), now)
        if window.remaining == 0 and window.reset_after is not None:
            return now + window.reset_after
        return None

    def _decrease(self, now: float) -> None:
        recent = sum(1 for t in self._starts if t > now - AIMD_WINDOW)
        halved = recent * (60.0 / AIMD_WINDOW) / 2.0
        if self._aimd is not None:
            halved = min(halved, self._aimd.estimate(now))
        self._aimd = Aimd(base=max(AIMD_MIN_RPM, halved), since=now)

    # --- the answers ------------------------------------------------------------------

    def _slots(self) -> int:
        cap = self._max_in_flight()
        return UNLIMITED if cap is None else max(0, cap - self._in_flight)

    def _rpm_room(self, now: float) -> int:
        if now < self._requests_paused_until:
            return 0
        if self._rpm is None:
            return UNLIMITED
        return max(0, math.floor(self._rpm.available(now) + EPSILON))

    def _tpm_room(self, now: float) -> int:
        if now < self._tokens_paused_until:
            return 0
        if self._tpm is None:
            return UNLIMITED
        available = self._tpm.available(now)
        per_request = self._last_request_tokens
        if available + EPSILON >= per_request:
            return min(UNLIMITED, math.floor((available + EPSILON) / per_request))
        return 1 if per_request > self._tpm.capacity and self._tpm.is_full(now) else 0

    def admit(self, now: float, *, tokens_per_request: float) -> int:
        """How many requests may start now (``UNLIMITED`` when nothing limits).

        The least of: free in-flight slots (slow start included), whole requests in the
        rpm bucket, and ``tokens_per_request``-sized requests in the tpm bucket (one when
        the request is larger than the bucket and the bucket is full).
        """
        self._update(now)
        self._last_request_tokens = max(tokens_per_request, EPSILON)
        return min(self._slots(), self._rpm_room(now), self._tpm_room(now))

    def throttle(self, now: float) -> Throttle | None:
        """Why ``admit`` is 0 now, or None. The tpm verdict uses the size of the request the
        latest ``admit`` asked about."""
        self._update(now)
        cap = self._limits.max_in_flight
        if cap is not None and self._in_flight >= math.ceil(cap * self._fraction):
            return "max_in_flight"
        if self._slots() == 0:
            return "slow_start"
        if self._rpm_room(now) == 0:
            return "rpm"
        if self._tpm_room(now) == 0:
            return "tpm"
        return None

    def next_change(self, now: float) -> float | None:
        """The earliest time ``admit`` may grow without a ``finish``; None: only a finish can.

        Considers the limits that bind now (the smallest terms of ``admit``): a bucket
        refilling by one more request, the end of a pause, the end of an AIMD limit. The
        tpm term uses the size of the request the latest ``admit`` asked about. The time
        may be late by the AIMD estimate's growth in between (asking again is cheap).
        """
        self._update(now)
        terms = (self._slots(), self._rpm_room(now), self._tpm_room(now))
        least = min(terms)
        if least >= UNLIMITED:
            return None
        times = []
        if terms[0] == least:
            return None
        if terms[1] == least:
            times.append(self._rpm_grows(now))
        if terms[2] == least:
            times.append(self._tpm_grows(now))
        if any(t is None for t in times):
            return None
        return max(t for t in times if t is not None)

    def _rpm_grows(self, now: float) -> float | None:
        if now < self._requests_paused_until:
            return self._requests_paused_until
        assert self._rpm is not None  # a bounded term has a bucket
        wanted = math.floor(self._rpm.available(now) + EPSILON) + 1
        if wanted <= self._rpm.capacity + EPSILON:
            return now + self._rpm.wait_time(wanted, now)
        return self._aimd.drops_at() if self._aimd is not None else None

    def _tpm_grows(self, now: float) -> float | None:
        if now < self._tokens_paused_until:
            return self._tokens_paused_until
        assert self._tpm is not None  # a bounded term has a bucket
        per_request = self._last_request_tokens
        wanted = (self._tpm_room(now) + 1) * per_request
        if wanted > self._tpm.capacity + EPSILON:
            if self._tpm_room(now) > 0:
                return None
            wanted = self._tpm.capacity  # a request larger than the bucket: until full
        return now + self._tpm.wait_time(wanted, now)

    def available_tokens(self, now: float) -> float | None:
        """Tokens in the tpm bucket now (negative: debt); None without a tpm budget."""
        self._update(now)
        return None if self._tpm is None else self._tpm.available(now)

    def snapshot(self, now: float) -> BudgetState:
        self._update(now)
        return BudgetState(
            in_flight=self._in_flight,
            max_in_flight=self._max_in_flight(),
            rpm=self._rpm_budget(now),
            tpm=self._tpm_budget(),
            reserved_tokens=self._reserved,
            learned=self._learned_rpm is not None or self._learned_tpm is not None,
            throttle=self.throttle(now),
        )
