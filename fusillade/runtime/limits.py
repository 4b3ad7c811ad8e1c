"""Per-model concurrency: how many requests of each model this daemon runs at once.

Not a semaphore that tasks wait on: the claim loop asks ``free_slots`` how many rows it
may claim per model and takes one slot per claimed row (``acquire_nowait``, which never
waits) before starting it, so a daemon never claims more than it can start at once.
Limits can change while running (``set_limit``); lowering one lets in-flight requests
finish and claims nothing more until the count is under the new limit. A model answered
with 429 is paused until the retry-after time (``pause``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import attrs


@attrs.frozen
class ModelStats:
    model: str
    limit: int
    in_flight: int
    paused_until: float | None


class ModelLimits:
    def __init__(self, limit_for: Callable[[str], int]) -> None:
        self._limit_for = limit_for
        self._overrides: dict[str, int] = {}
        self._in_flight: dict[str, int] = {}
        self._paused: dict[str, float] = {}

    def limit(self, model: str) -> int:
        return self._overrides.get(model, self._limit_for(model))

    def set_limit(self, model: str, limit: int) -> None:
        if limit < 0:
            raise ValueError("a concurrency limit cannot be negative")
        self._overrides[model] = limit

    def pause(self, model: str, until: float) -> None:
        self._paused[model] = max(until, self._paused.get(model, until))

    def paused_until(self, model: str, now: float) -> float | None:
        until = self._paused.get(model)
        if until is not None and until <= now:
            del self._paused[model]
            return None
        return until

    def next_unpause(self, now: float) -> float | None:
        later = [t for t in self._paused.values() if t > now]
        return min(later) if later else None

    def free_slots(self, models: Iterable[str], now: float) -> dict[str, int]:
        out = {}
        for model in models:
            if self.paused_until(model, now) is not None:
                continue
            free = self.limit(model) - self._in_flight.get(model, 0)
            if free > 0:
                out[model] = free
        return out

    def acquire_nowait(self, model: str) -> None:
        """Take one slot of ``model`` without waiting or checking the limit: the claim loop
        claims only the slots ``free_slots`` offered (a limit lowered meanwhile lets the
        count exceed it until requests finish)."""
        self._in_flight[model] = self._in_flight.get(model, 0) + 1

    def release(self, model: str) -> None:
        left = self._in_flight[model] - 1
        if left:
            self._in_flight[model] = left
        else:
            del self._in_flight[model]  # nothing kept for idle models

    def in_flight(self, model: str) -> int:
        return self._in_flight.get(model, 0)

    def statistics(self, now: float) -> tuple[ModelStats, ...]:
        models = sorted(set(self._in_flight) | set(self._overrides) | set(self._paused))
        return tuple(
            ModelStats(m, self.limit(m), self.in_flight(m), self.paused_until(m, now))
            for m in models
        )
