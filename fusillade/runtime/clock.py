"""The database's clock, as every process of one deployment reads it.

Theory of operation
-------------------
Times that one process writes and another compares (heartbeats against the stale
threshold, ``claimed_at`` against the lease, ``not_before`` against the claim, a batch's
``expires_at`` against the sweep) must come from one clock, or a host whose clock is off
makes the others misjudge it: a daemon 40 s behind looked dead to its peers every
maintenance round. That one clock is the database's.

``Clock.now()`` is the database's time as last measured (``sync``: one round trip, the
reading placed at its midpoint) plus the event loop's elapsed time since, so the times
written to the database and the loop's timeouts agree, and under trio's ``MockClock``
virtual time moves both at once. ``sync`` runs again now and then (the daemon at every
heartbeat) and re-anchors when the two disagree by more than ``TOLERANCE``: the loop's
clock can drift, and stops while a host is suspended. A store without a clock of its own
(the in-memory one: everything is in this process) leaves the host's clock in charge.
The host's clock is read only to say how far it is off (``host_offset``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import anyio
import anyio.abc

from fusillade.errors import StoreError

log = logging.getLogger("fusillade.clock")

# Re-anchor when the database's clock and ours disagree by more than this (seconds).
TOLERANCE = 0.25
# Say so in the log when this host's clock is further than this off the database's.
_WARN_OFFSET = 1.0

ReadTime = Callable[[], Awaitable[datetime | None]]


def host_time() -> datetime:
    """This host's wall clock: only for saying how far it is off the database's."""
    return datetime.now(UTC)


class Clock:
    def __init__(self, anchor: datetime | None = None, at: float | None = None) -> None:
        self._anchor = anchor or host_time()
        self._start = anyio.current_time() if at is None else at
        self.host_offset: float = 0.0  # host time minus database time at the last sync

    def now(self) -> datetime:
        """The database's time now. Call it on the event loop (it reads the loop's clock),
        never from a worker thread."""
        return self.at(anyio.current_time())

    def at(self, loop_time: float) -> datetime:
        """The database's time at ``loop_time`` (``anyio.current_time()`` scale)."""
        return self._anchor + timedelta(seconds=loop_time - self._start)

    def loop_time_at(self, when: datetime) -> float:
        """The loop time (``anyio.current_time()`` scale) at which ``when`` arrives."""
        return self._start + (when - self._anchor).total_seconds()

    async def sync(self, read: ReadTime) -> float:
        """Measure the database's time with ``read`` and re-anchor on it if we are off by
        more than ``TOLERANCE``. Returns how far off we were, in seconds (0 when the store
        has no clock of its own). Raises what ``read`` raises."""
        sent = anyio.current_time()
        reference = await read()
        at = (sent + anyio.current_time()) / 2
        if reference is None:
            return 0.0
        offset = (host_time() - reference).total_seconds() - (anyio.current_time() - at)
        if abs(offset) > _WARN_OFFSET and abs(offset - self.host_offset) > _WARN_OFFSET:
            log.warning(
                "this host's clock is %+.1f s off the database's; fusillade uses the "
                "database's clock for every time it stores or compares",
                offset,
            )
        self.host_offset = offset
        error = (self._anchor - reference).total_seconds() + (at - self._start)
        if abs(error) > TOLERANCE:
            self._anchor, self._start = reference, at
        return error

    async def keep_synced(
        self,
        read: ReadTime,
        interval: float,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Sync now, then every ``interval`` seconds; a failed read is logged and retried
        at the next interval (the clock keeps running meanwhile)."""
        started = False
        while True:
            try:
                await self.sync(read)
            except (StoreError, TimeoutError) as exc:
                log.warning("could not read the database's clock: %s", exc)
            if not started:
                task_status.started()
                started = True
            await anyio.sleep(interval)
