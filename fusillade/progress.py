"""Progress display for ``run`` and ``watch``: a bar on a terminal, lines otherwise.

The display only formats; the caller feeds it batch views, or ``Snapshot``s of a batch
known only through the API (whose counts say nothing of in-flight or canceled requests).
On a terminal one line is redrawn in place (``\\r``); elsewhere (CI logs, pipes) a plain
line is printed at most every ``interval`` seconds and once at the end.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TextIO

import attrs

from fusillade.core.models import BatchStatus, BatchView, RequestCounts

_BAR = 24


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


@attrs.frozen
class Snapshot:
    """What the progress line shows of a batch.

    ``detailed``: the counts tell in-flight and canceled requests apart (a batch read from
    the database); else ``failed`` includes the canceled ones and nothing is known of
    what is in flight (OpenAI's ``request_counts``), and the line shows neither.
    """

    status: BatchStatus
    counts: RequestCounts
    detailed: bool = True

    @classmethod
    def of(cls, view: BatchView) -> Snapshot:
        return cls(view.status, view.counts)


class Progress:
    def __init__(self, stream: TextIO, *, interval: float = 5.0, tty: bool | None = None) -> None:
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self.interval = interval
        self._start = time.monotonic()
        self._first_done: int | None = None
        self._last_print = 0.0

    def line(self, view: BatchView | Snapshot, *, throttled: Sequence[str] = ()) -> str:
        """The progress text for ``view`` (no line ending)."""
        snapshot = view if isinstance(view, Snapshot) else Snapshot.of(view)
        c = snapshot.counts
        done = c.completed + c.failed + c.canceled
        elapsed = max(time.monotonic() - self._start, 1e-6)
        if self._first_done is None:
            self._first_done = done  # resumed runs: rate counts only this run's work
        rate = (done - self._first_done) / elapsed
        left = c.total - done
        eta = _duration(left / rate) if rate > 0 and left > 0 else "-"
        share = done / c.total if c.total else 1.0
        text = f"{snapshot.status.value:<11} {done}/{c.total} ({share:6.1%}) "
        text += f"ok {c.completed} failed {c.failed} "
        if snapshot.detailed:
            text += f"canceled {c.canceled} in flight {c.in_progress} "
        text += f"| {rate:,.1f} req/s | ETA {eta}"
        if throttled:
            text += f" | throttled: {', '.join(throttled)}"
        if self.tty:
            filled = int(share * _BAR)
            text = f"[{'#' * filled}{'.' * (_BAR - filled)}] {text}"
        return text

    def update(
        self,
        view: BatchView | Snapshot,
        *,
        final: bool = False,
        throttled: Sequence[str] = (),
    ) -> None:
        text = self.line(view, throttled=throttled)
        now = time.monotonic()
        if self.tty:
            self.stream.write("\r\x1b[2K" + text + ("\n" if final else ""))
            self.stream.flush()
        elif final or now - self._last_print >= self.interval:
            self.stream.write(text + "\n")
            self.stream.flush()
            self._last_print = now
