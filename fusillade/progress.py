"""Progress display for ``run`` and ``watch``: a bar on a terminal, lines otherwise.

The display only formats; the caller feeds it batch views, or ``Snapshot``s of a batch
known only through the API (whose counts say nothing of in-flight or canceled requests).
On a terminal one line is redrawn in place (``\\r``); elsewhere (CI logs, pipes) a plain
line is printed at most every ``interval`` seconds and once at the end.

What holds the batch back follows the counts when the caller knows it: retries waiting
(and how many after a 429), models paused after a 429, the budgets throttling, and the
latest error, shortened to one line with its secrets masked (``describe``). At the end,
``error_summary`` lists the most frequent kinds of error with one example each.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from typing import Any, TextIO

import attrs

from fusillade.core.models import BatchStatus, BatchView, FailureReason, RequestCounts
from fusillade.core.trouble import BatchTrouble, ErrorKinds, ErrorSample
from fusillade.redact import mask_secrets

_BAR = 24
ERROR_WIDTH = 60
"""Characters of an error the progress line shows (its kind included)."""
_SPACES = re.compile(r"\s+")
# The "message" of a JSON error body cut short by the store's prefix.
_MESSAGE = re.compile(r'"message"\s*:\s*"((?:[^"\\]|\\.)*)')


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def shorten(text: str, width: int) -> str:
    """``text`` on one line (whitespace runs become one space), secrets masked, cut to
    ``width`` characters (``...`` marking the cut)."""
    text = _SPACES.sub(" ", mask_secrets(text)).strip()
    return text if len(text) <= width else text[: max(width - 3, 0)].rstrip() + "..."


def _body_message(body: str) -> str | None:
    """The message of an upstream's error body: OpenAI's ``{"error": {"message": ...}}``
    (also cut short, as stores return a prefix), a string ``error``, else the text."""
    try:
        data: Any = json.loads(body)
    except ValueError:
        match = _MESSAGE.search(body)
        if match is not None:
            try:
                return str(json.loads(f'"{match.group(1)}"'))
            except ValueError:
                return match.group(1)
        return body if body.strip() and not body.lstrip().startswith(("{", "[")) else None
    if isinstance(data, dict):
        error = data.get("error", data)
        if isinstance(error, dict):
            error = error.get("message")
        if isinstance(error, str) and error.strip():
            return error
        return None
    return body if isinstance(data, str) else None


def describe(sample: ErrorSample, width: int = ERROR_WIDTH, *, kind: bool = True) -> str:
    """An error in one line of at most ``width`` characters: its kind (``kind=False``:
    not), then what the upstream said (the message of its body) or else our message."""
    detail = sample.message or ""
    if sample.reason is FailureReason.HTTP_STATUS and sample.body:
        detail = _body_message(sample.body) or detail
    if not kind:
        return shorten(detail or sample.kind, width)
    return shorten(f"{sample.kind}: {detail}" if detail else sample.kind, width)


def error_summary(kinds: ErrorKinds, *, width: int = 100) -> list[str]:
    """The lines of the final summary: the most frequent kinds of error, each with its
    count and its latest example; nothing when no request failed."""
    if not kinds.kinds:
        return []
    of = f"the latest {kinds.scanned:,}" if kinds.capped else f"{kinds.scanned:,}"
    lines = [f"errors by kind (of {of} failed, canceled or expired requests):"]
    name = max(len(k.kind) for k in kinds.kinds)
    count = max(len(f"{k.count:,}") for k in kinds.kinds)
    for k in kinds.kinds:
        head = f"  {k.kind:<{name}}  {k.count:>{count},}  e.g. "
        lines.append(head + describe(k.example, max(width - len(head), 20), kind=False))
    return lines


def trouble_text(
    trouble: BatchTrouble | None, *, paused: Sequence[str] = (), throttled: Sequence[str] = ()
) -> str:
    """What holds a batch back, as the end of its progress line ("" when nothing does).

    ``paused``: models paused after a 429 (with the time left); ``throttled``: why the
    budgets hold requests (``rpm``, ``tpm``...).
    """
    parts = []
    if trouble is not None and trouble.retries_waiting:
        n = f"{trouble.retries_waiting:,}{'+' if trouble.capped else ''}"
        limited = f" ({trouble.rate_limited:,} after 429)" if trouble.rate_limited else ""
        parts.append(f"retries waiting {n}{limited}")
    if paused:
        parts.append(f"429 pause: {', '.join(paused)}")
    if throttled:
        parts.append(f"throttled: {', '.join(throttled)}")
    latest = trouble.latest_error if trouble is not None else None
    if latest is not None:
        parts.append(f"last error: {describe(latest)}")
    return "".join(f" | {p}" for p in parts)


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
        self._last_print = -1e9
        self._last_details = -1e9

    def details_due(self, *, final: bool = False) -> bool:
        """Whether to read the costlier details (``BatchTrouble``) for the next ``update``:
        when it prints a line, and on a terminal at most every second. True counts as
        read."""
        now = time.monotonic()
        if self.tty:
            due = now - self._last_details >= min(self.interval, 1.0)
        else:
            due = now - self._last_print >= self.interval
        if due or final:
            self._last_details = now
        return due or final

    def line(
        self,
        view: BatchView | Snapshot,
        *,
        throttled: Sequence[str] = (),
        paused: Sequence[str] = (),
        trouble: BatchTrouble | None = None,
        in_flight: int | None = None,
    ) -> str:
        """The progress text for ``view`` (no line ending). ``in_flight``: the batch's
        requests sent and not yet answered, when the daemon sending them runs in this
        process (``run``); else the line shows the requests the daemons have claimed."""
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
            text += f"canceled {c.canceled} "
            # the daemon's own count when it runs here; else the database's, which also
            # holds answers being recorded and so may exceed the concurrency
            if in_flight is not None:
                text += f"in flight {in_flight} "
            else:
                text += f"claimed {c.in_progress} "
        text += f"| {rate:,.1f} req/s | ETA {eta}"
        text += trouble_text(trouble, paused=paused, throttled=throttled)
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
        paused: Sequence[str] = (),
        trouble: BatchTrouble | None = None,
        in_flight: int | None = None,
    ) -> None:
        text = self.line(
            view, throttled=throttled, paused=paused, trouble=trouble, in_flight=in_flight
        )
        now = time.monotonic()
        if self.tty:
            self.stream.write("\r\x1b[2K" + text + ("\n" if final else ""))
            self.stream.flush()
        elif final or now - self._last_print >= self.interval:
            self.stream.write(text + "\n")
            self.stream.flush()
            self._last_print = now
