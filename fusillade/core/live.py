"""Following a running batch's output: where a follower is (``ResultCursor``), the lines
it is given (``LiveLine``), one read of them (``LivePage``) and how a read moves the
cursor (``advance``).

Lines are read in the order of their position (in PostgreSQL the id of the transaction
that recorded the line), then the request's id. Positions are handed out before commit,
so a line may become visible after the follower passed its place: the cursor also names
the transactions that were still in progress below its position ("waiting"), and the
next read returns their lines first once they commit (docs/semantics.md, "Following
results while a batch runs"). A follower that resumes after the cursor of the last line
it kept gets every other line exactly once.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from typing import Final
from uuid import UUID

import attrs

from fusillade.core.models import BatchStatus
from fusillade.core.results import ResultLine

_ZERO = UUID(int=0)
_CURSOR: Final = re.compile(r"([0-9]{1,20})\.([0-9a-f]{32})((?:~[0-9]{1,20}(?:\.[0-9a-f]{32})?)*)")
_WAITING: Final = re.compile(r"~([0-9]{1,20})(?:\.([0-9a-f]{32}))?")
MAX_CURSOR: Final = 100_000
"""Characters a cursor may have (its waiting transactions are bounded by the server's
connections)."""


@attrs.frozen
class ResultCursor:
    """After the line of ``request_id`` at ``position``, and after the lines already read
    of the transactions in ``waiting`` (``(transaction id, last request id read or the
    zero uuid)``, sorted), which were in progress below ``position`` when it was reached.

    Opaque to clients: ``str(cursor)``, read back by ``ResultCursor.parse``.
    """

    position: int
    request_id: UUID
    waiting: tuple[tuple[int, UUID], ...] = ()

    def __str__(self) -> str:
        waits = "".join(f"~{x}" if a == _ZERO else f"~{x}.{a.hex}" for x, a in self.waiting)
        return f"{self.position}.{self.request_id.hex}{waits}"

    @classmethod
    def parse(cls, text: str) -> ResultCursor:
        """The cursor ``str(cursor)`` gave.

        Raises:
            ValueError: ``text`` is not one.
        """
        m = _CURSOR.fullmatch(text) if len(text) <= MAX_CURSOR else None
        if m is None:
            raise ValueError(f"not a results cursor: {text[:80]!r}")
        waiting = tuple((int(x), UUID(hex=a) if a else _ZERO) for x, a in _WAITING.findall(m[3]))
        numbers = [int(m[1]), *(x for x, _ in waiting)]
        if any(n >= 2**64 for n in numbers) or list(waiting) != sorted(set(waiting)):
            raise ValueError(f"not a results cursor: {text[:80]!r}")
        return cls(int(m[1]), UUID(hex=m[2]), waiting)


START: Final = ResultCursor(0, _ZERO)
"""Before every line."""


@attrs.frozen
class LiveLine:
    """One output line of a batch and the cursor to resume after it."""

    line: ResultLine
    cursor: ResultCursor


@attrs.frozen
class LiveLines:
    """What one read of a batch's output after a cursor found: the lines, in order, and
    the cursor to continue from (that of the last line, or a newer one: transactions it
    waited on may have ended without a line)."""

    lines: tuple[LiveLine, ...]
    cursor: ResultCursor


@attrs.frozen
class LivePage:
    """One read of a batch's output after a cursor.

    Attributes:
        lines: the lines after the cursor, in order.
        cursor: where the next read continues (``after``).
        complete: the batch is terminal and these are its last lines (no later read
            returns more).
        status: the batch's status when it was read.
    """

    lines: tuple[LiveLine, ...]
    cursor: ResultCursor
    complete: bool
    status: BatchStatus


@attrs.frozen
class Found:
    """A line a read found: its position, and whether it is one of a waiting
    transaction's (read first, below the cursor's position)."""

    line: ResultLine
    position: int
    late: bool


def advance(
    after: ResultCursor | None, found: Sequence[Found], in_progress: Collection[int]
) -> LiveLines:
    """The lines ``found`` after ``after`` (the waiting transactions' first, then those
    after its position, each in order) with their cursors, given the transactions in
    progress when they were read (in the same snapshot).

    A waiting transaction stays waiting while it is in progress; once it has ended its
    lines were all in this read, and it is dropped. Passing a position, the cursor starts
    waiting on every transaction still in progress below it: it may yet commit a line
    there.
    """
    start = after or START
    waiting = dict(start.waiting)
    lines: list[LiveLine] = []
    for f in found:
        if f.late:
            waiting[f.position] = f.line.request_id
            cursor = ResultCursor(start.position, start.request_id, _sorted(waiting))
            lines.append(LiveLine(f.line, cursor))
    running = set(in_progress)
    waiting = {x: a for x, a in waiting.items() if x in running}
    position, request_id = start.position, start.request_id
    for f in found:
        if not f.late:
            position, request_id = f.position, f.line.request_id
            below = {x: _ZERO for x in running if x < position and x not in waiting}
            cursor = ResultCursor(position, request_id, _sorted({**waiting, **below}))
            lines.append(LiveLine(f.line, cursor))
    below = {x: _ZERO for x in running if x < position and x not in waiting}
    final = ResultCursor(position, request_id, _sorted({**waiting, **below}))
    return LiveLines(tuple(lines), final)


def _sorted(waiting: dict[int, UUID]) -> tuple[tuple[int, UUID], ...]:
    return tuple(sorted(waiting.items()))
