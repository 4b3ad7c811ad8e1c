"""The listener: PostgreSQL LISTEN wakes the claim loop and the cancel watcher.

New batches, retries and released rows (``fusillade_work``) wake the claim loop;
cancellations (``fusillade_cancel``) wake the cancel watcher. When the repository finds
that notifications cannot reach it (its probe never comes back, as through PgBouncer in
transaction pooling), the listener says so once in the log and ends: the claim loop's
poll interval and the cancel watcher's interval remain.
"""

from __future__ import annotations

from typing import Any

import anyio
import anyio.to_thread

from fusillade.errors import StoreError
from fusillade.runtime._base import DaemonBase, log

# A new listener's probe notification normally arrives within milliseconds; none within
# this long means notifications cannot reach the daemon (PgBouncer in transaction
# pooling): it then relies on polling alone. A false "no" (a very slow database) costs
# only latency, never work.
_PROBE_TIMEOUT = 5.0


class Listener(DaemonBase):
    async def _listen_loop(self) -> None:
        listen = getattr(self.repo.sync, "listen", None)
        if listen is None:
            return
        listener: Any = None
        probe_deadline = 0.0
        limiter = anyio.CapacityLimiter(1)
        try:
            while True:
                try:
                    if listener is None:
                        listener = await anyio.to_thread.run_sync(listen, limiter=limiter)
                        probe_deadline = anyio.current_time() + _PROBE_TIMEOUT
                    if not listener.heard and anyio.current_time() > probe_deadline:
                        log.warning(
                            "listener: notifications do not reach this daemon (its probe "
                            "never came back: PgBouncer in transaction pooling?); new work "
                            "is found by polling every %g s",
                            self.config.poll_interval.total_seconds(),
                        )
                        return
                    channels = await anyio.to_thread.run_sync(
                        listener.wait, 1.0, limiter=limiter, abandon_on_cancel=True
                    )
                except StoreError as exc:
                    log.warning("listener: %s", exc)
                    if listener is not None:
                        listener.close()
                        listener = None
                    await anyio.sleep(1.0)
                    continue
                if "fusillade_work" in channels:
                    self._wake_for_work()
                if "fusillade_cancel" in channels:
                    self._check_cancels.set()
        finally:
            if listener is not None:
                listener.close()
