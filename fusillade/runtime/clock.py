"""The daemon's clock: wall time anchored once, advanced by the event loop's clock.

``now()`` is the wall time at start-up plus the loop's elapsed time, so the times written
to the database and the loop's timeouts agree. Under trio's ``MockClock`` virtual time
moves both at once, which lets tests run minute-long backoffs in milliseconds.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import anyio


class Clock:
    def __init__(self, anchor: datetime | None = None) -> None:
        self._anchor = anchor or datetime.now(UTC)
        self._start = anyio.current_time()

    def now(self) -> datetime:
        return self._anchor + timedelta(seconds=anyio.current_time() - self._start)

    def loop_time_at(self, when: datetime) -> float:
        """The loop time (``anyio.current_time()`` scale) at which ``when`` arrives."""
        return self._start + (when - self._anchor).total_seconds()
