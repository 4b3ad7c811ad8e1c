"""``Follow``: a running batch's output lines as they are recorded (``Engine.follow``)."""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable

import anyio

from fusillade.core.live import LiveLine, LivePage, ResultCursor


class Follow:
    """An async iterator of ``LiveLine``: each read (``read(after)``) after the cursor of
    the last line, a pause of ``interval`` seconds when a read finds nothing new, the end
    once a read says the batch is complete.

    A plain async iterator, not an async generator (as ``Content``): a consumer that
    stops early, or is cancelled in a pause, leaves nothing to finalise.
    """

    def __init__(
        self,
        read: Callable[[ResultCursor | None], Awaitable[LivePage]],
        after: ResultCursor | None,
        interval: float,
    ) -> None:
        self._read = read
        self._cursor = after
        self._interval = interval
        self._ready: deque[LiveLine] = deque()
        self._complete = False

    def __aiter__(self) -> Follow:
        return self

    async def __anext__(self) -> LiveLine:
        while not self._ready:
            if self._complete:
                raise StopAsyncIteration
            page = await self._read(self._cursor)
            self._ready.extend(page.lines)
            self._cursor = page.cursor
            self._complete = page.complete
            if not page.lines and not page.complete:
                await anyio.sleep(self._interval)
        return self._ready.popleft()
