"""Graceful shutdown: in-flight requests get their grace period, then rows go back.

``stop()`` ends the claim loop; ``_wind_down`` then gives the requests in flight
``shutdown_grace`` seconds and aborts the rest without a result; ``_hand_back`` writes
what the writer still holds, releases every row this daemon holds (the attempt is not
counted, so another daemon takes it at once) and marks the daemon stopped. The daemon
runs ``_hand_back`` shielded, so the same clean-up happens when it is cancelled.
"""

from __future__ import annotations

import anyio

from fusillade.errors import StoreError
from fusillade.runtime._base import DaemonBase, log


class Shutdown(DaemonBase):
    async def _wind_down(self) -> None:
        """Give in-flight requests the grace period, then abort the rest."""
        with anyio.move_on_after(self.config.shutdown_grace.total_seconds()):
            await self._tasks_done.wait()
        for entry in list(self._in_flight.values()):
            entry.released = True
            entry.scope.cancel()

    async def _hand_back(self) -> None:
        """Release every row this daemon still holds and mark it stopped."""
        try:
            await self.writer.drain()
            released = await self.repo.call(self.repo.sync.release, self.id, now=self.now())
            await self.repo.call(self.repo.sync.stop_daemon, self.id, now=self.now())
            if released:
                log.info("released %d in-flight requests", released)
        except StoreError as exc:
            log.warning("could not release rows at shutdown (they will be reclaimed): %s", exc)
