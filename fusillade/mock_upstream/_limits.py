"""Rate limits the way OpenAI enforces them: ``rpm``, ``tpm`` and ``max_in_flight``.

Theory of operation: each limit of a scope (a model with its own behaviour, else all requests
together) is a token bucket of the limit's size that starts full and refills ``limit / 60``
per second, plus a short window: what was admitted in the last ``window`` seconds may not
exceed ``ceil(limit / 60 * window)``, as OpenAI enforces "60,000 rpm" as 1,000 requests a
second. A request that does not fit takes nothing and is told how long until it would; one
that fits takes its cost from both. A request larger than the short window's share is still
admitted alone into an empty window (else it could never pass); one larger than the bucket
never fits (OpenAI's "Request too large").

Pure: the time comes in as ``now`` (the server passes ``trio.current_time()``); no I/O.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from typing import Literal

import attrs

Cause = Literal["rpm", "tpm", "max_in_flight"]
DEFAULT_OUTPUT_TOKENS = 16  # counted when a request names no max_tokens (OpenAI's old default)
MAX_IN_FLIGHT_RETRY = 1.0  # seconds: nobody knows when a running request ends
_EPSILON = 1e-9  # float noise in refills and window edges (seconds or tokens)


@attrs.frozen(kw_only=True)
class Limits:
    """The limits one request is admitted under (``None``: no limit)."""

    rpm: int | None = None
    tpm: int | None = None
    max_in_flight: int | None = None
    window: float = 1.0

    @property
    def any_set(self) -> bool:
        return self.rpm is not None or self.tpm is not None or self.max_in_flight is not None


@attrs.frozen
class Quota:
    """One per-minute bucket as the ``x-ratelimit-*`` headers tell it."""

    limit: int
    remaining: int  # whole units left, rounded down
    reset: float  # seconds until the bucket is full again


@attrs.frozen(kw_only=True)
class Refusal:
    cause: Cause
    message: str
    retry_after: float | None  # seconds until the request would fit; None: it never will


@attrs.frozen(kw_only=True)
class Decision:
    """Admitted when ``refusal`` is ``None``; the quotas as of after the decision."""

    refusal: Refusal | None
    requests: Quota | None
    tokens: Quota | None


@attrs.define
class _Budget:
    """One limit of one scope: the bucket's level at ``updated`` and the short window's takes."""

    level: float
    updated: float
    taken: deque[tuple[float, int]] = attrs.Factory(deque)  # (when, amount), oldest first

    def catch_up(self, limit: int, window: float, now: float) -> None:
        self.level = min(float(limit), self.level + (now - self.updated) * limit / 60)
        self.updated = now
        while self.taken and self.taken[0][0] + window - now <= _EPSILON:  # as ``wait`` counts
            self.taken.popleft()

    def wait(self, cost: int, limit: int, window: float, now: float) -> float:
        """Seconds until ``cost`` fits (0: now; ``inf``: never); call ``catch_up`` first."""
        if cost > limit:
            return math.inf
        shortfall = cost - self.level
        bucket = shortfall * 60 / limit if shortfall > _EPSILON else 0.0  # float noise
        used = sum(amount for _, amount in self.taken)
        share = math.ceil(limit / 60 * window)
        if window <= 0 or not used or used + cost <= share:
            return bucket
        for when, amount in self.taken:  # oldest first: wait until enough of them have left
            used -= amount
            if not used or used + cost <= share:
                return max(bucket, when + window - now)
        raise AssertionError("unreachable: the window empties")

    def take(self, cost: int, now: float) -> None:
        self.level -= cost
        self.taken.append((now, cost))

    def quota(self, limit: int) -> Quota:
        level = max(0.0, self.level)
        return Quota(limit, math.floor(round(level, 6)), (limit - level) * 60 / limit)


def token_cost(body_bytes: int, max_output: int | None) -> int:
    """What OpenAI counts against ``tpm`` on admission: the body at 4 bytes a token plus the
    output allowed (``DEFAULT_OUTPUT_TOKENS`` when the request names none)."""
    output = DEFAULT_OUTPUT_TOKENS if max_output is None else max_output
    return math.ceil(body_bytes / 4) + output


class RateLimiter:
    """The budgets of every scope; ``admit`` each request, ``finished`` each admitted one."""

    def __init__(self) -> None:
        self._budgets: dict[tuple[str | None, str], _Budget] = {}
        self._in_flight: Counter[str | None] = Counter()

    def admit(self, scope: str | None, limits: Limits, tokens: int, now: float) -> Decision:
        """Admit a request costing one request and ``tokens`` tokens, or say why not.

        An admitted request takes from the buckets and counts in flight until ``finished``.
        """
        checks: list[tuple[Cause, int, int]] = []  # (limit, cost, size)
        if limits.rpm is not None:
            checks.append(("rpm", 1, limits.rpm))
        if limits.tpm is not None:
            checks.append(("tpm", tokens, limits.tpm))
        budgets = {
            cause: self._budget(scope, cause, limit, limits.window, now)
            for cause, _, limit in checks
        }
        waits = {
            cause: budgets[cause].wait(cost, limit, limits.window, now)
            for cause, cost, limit in checks
        }
        refusal: Refusal | None = None
        if limits.max_in_flight is not None and self._in_flight[scope] >= limits.max_in_flight:
            refusal = Refusal(
                cause="max_in_flight",
                message=f"Too many concurrent requests: limit {limits.max_in_flight} in flight.",
                retry_after=MAX_IN_FLIGHT_RETRY,
            )
        elif any(wait > 0 for wait in waits.values()):
            # Name a limit the request can never fit first, else the first one it is short of.
            never = [check for check in checks if math.isinf(waits[check[0]])]
            cause, cost, limit = (never or [c for c in checks if waits[c[0]] > 0])[0]
            refusal = _refusal(cause, cost, limit, max(waits.values()))
        if refusal is None:
            for cause, cost, _ in checks:
                budgets[cause].take(cost, now)
            self._in_flight[scope] += 1
        return Decision(
            refusal=refusal,
            requests=budgets["rpm"].quota(limits.rpm) if limits.rpm is not None else None,
            tokens=budgets["tpm"].quota(limits.tpm) if limits.tpm is not None else None,
        )

    def finished(self, scope: str | None) -> None:
        """An admitted request has been answered (or its connection is gone)."""
        self._in_flight[scope] -= 1
        if not self._in_flight[scope]:
            del self._in_flight[scope]

    def reset(self) -> None:
        """Fill every bucket again; the requests in flight stay counted."""
        self._budgets.clear()

    def _budget(
        self, scope: str | None, cause: str, limit: int, window: float, now: float
    ) -> _Budget:
        """The budget as of ``now`` (a new one is full)."""
        budget = self._budgets.get((scope, cause))
        if budget is None:
            budget = self._budgets[scope, cause] = _Budget(level=float(limit), updated=now)
        budget.catch_up(limit, window, now)
        return budget


def _refusal(cause: Cause, cost: int, limit: int, wait: float) -> Refusal:
    unit, per = ("requests", "RPM") if cause == "rpm" else ("tokens", "TPM")
    if math.isinf(wait):
        message = (
            f"Request too large for {unit} per min ({per}): Limit {limit}, Requested {cost}. "
            "The input or output tokens must be reduced in order to run successfully."
        )
        return Refusal(cause=cause, message=message, retry_after=None)
    message = (
        f"Rate limit reached for {unit} per min ({per}): Limit {limit}, Requested {cost}. "
        f"Please try again in {format_duration(wait)}."
    )
    return Refusal(cause=cause, message=message, retry_after=wait)


def whole_ms(seconds: float) -> int:
    """``seconds`` in milliseconds, rounded up (float noise below a nanosecond ignored)."""
    return math.ceil(round(max(0.0, seconds) * 1000, 6))


def format_duration(seconds: float) -> str:
    """A duration as Go prints it, as OpenAI's ``x-ratelimit-reset-*`` headers carry it,
    rounded up to the millisecond: ``0s``, ``12ms``, ``1s``, ``1m30.5s``, ``6m0s``, ``1h0m0s``."""
    ms = whole_ms(seconds)
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    whole, fraction = divmod(rest, 1000)
    text = f"{whole}.{fraction:03d}".rstrip("0") if fraction else str(whole)
    if hours:
        return f"{hours}h{minutes}m{text}s"
    if minutes:
        return f"{minutes}m{text}s"
    return f"{text}s"
