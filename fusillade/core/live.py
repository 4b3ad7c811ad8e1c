"""Following a running batch's output: where a follower is (``ResultCursor``), the lines
it is given (``LiveLine``) and one read of them (``LivePage``).

The cursor is a position in the order lines become final (docs/semantics.md, "Following
results while a batch runs"): a number that only grows as results are recorded (in
PostgreSQL the id of the transaction that recorded the line), then the request's id. A
follower that resumes after the cursor of the last line it kept gets every other line
exactly once.
"""

from __future__ import annotations

import re
from typing import Final
from uuid import UUID

import attrs

from fusillade.core.models import BatchStatus
from fusillade.core.results import ResultLine

_CURSOR: Final = re.compile(r"([0-9]{1,20})\.([0-9a-f]{32})")


@attrs.frozen
class ResultCursor:
    """After the line of ``request_id`` recorded at ``position``: an opaque token to
    clients (``str(cursor)``, read back by ``ResultCursor.parse``)."""

    position: int
    request_id: UUID

    def __str__(self) -> str:
        return f"{self.position}.{self.request_id.hex}"

    @classmethod
    def parse(cls, text: str) -> ResultCursor:
        """The cursor ``str(cursor)`` gave.

        Raises:
            ValueError: ``text`` is not one.
        """
        m = _CURSOR.fullmatch(text)
        if m is None or int(m[1]) >= 2**64:
            raise ValueError(f"not a results cursor: {text[:80]!r}")
        return cls(int(m[1]), UUID(hex=m[2]))


@attrs.frozen
class LiveLine:
    """One output line of a batch and the cursor to resume after it."""

    line: ResultLine
    cursor: ResultCursor


@attrs.frozen
class LivePage:
    """One read of a batch's output after a cursor.

    Attributes:
        lines: the lines after the cursor that are final (none can later appear before
            them), in order.
        cursor: where the next read continues: the last line's, or the cursor read after.
        complete: the batch is terminal and these are its last lines (no later read
            returns more).
        status: the batch's status when it was read.
    """

    lines: tuple[LiveLine, ...]
    cursor: ResultCursor | None
    complete: bool
    status: BatchStatus
