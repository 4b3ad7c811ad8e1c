"""Bytes fed in chunks of any size, split into lines in bounded memory."""

from __future__ import annotations

from typing import Protocol

import attrs


@attrs.frozen
class OversizedLine:
    """Stands for a line longer than the limit; its bytes were discarded unread."""


class Readable(Protocol):
    """A binary stream: ``read(size)`` returns at most ``size`` bytes, ``b""`` at the end."""

    def read(self, size: int, /) -> bytes: ...


class LineSplitter:
    """Splits bytes fed in chunks of any size into lines, holding at most one line.

    Memory: at most ``max_line_bytes + 1`` buffered, plus the chunk being split (and
    its lines).

    Lines are returned without their ``\\n`` (a ``\\r`` before it is kept). A line whose
    content exceeds ``max_line_bytes`` becomes one ``OversizedLine``, returned as soon as
    the limit is crossed; the rest of it is skipped as it arrives. A final empty segment
    (the file ends with ``\\n``) is not a line.
    """

    def __init__(self, max_line_bytes: int) -> None:
        self._max = max_line_bytes
        self._buf = bytearray()
        self._skipping = False

    def feed(self, chunk: bytes) -> list[bytes | OversizedLine]:
        if self._skipping:
            end = chunk.find(b"\n")
            if end < 0:
                return []
            self._skipping = False
            chunk = chunk[end + 1 :]
        out: list[bytes | OversizedLine] = []
        lines = chunk.split(b"\n")
        tail = lines.pop()
        if lines:
            if self._buf:
                self._buf += lines[0]
                lines[0] = bytes(self._buf)
                self._buf.clear()
            # Lines are seldom near the limit: check them one by one only then.
            if max(map(len, lines)) > self._max:
                out = [self._checked(line) for line in lines]
            else:
                out = list(lines)
        if tail:
            self._buf += tail
            # +1: a trailing "\r" of a CRLF line may still be in the buffer.
            if len(self._buf) > self._max + 1:
                self._buf.clear()
                self._skipping = True
                out.append(OversizedLine())
        return out

    def close(self) -> list[bytes | OversizedLine]:
        """The last line when the input did not end with ``\\n``."""
        if self._skipping or not self._buf:
            return []
        return [self._take()]

    def _take(self) -> bytes | OversizedLine:
        line = bytes(self._buf)
        self._buf.clear()
        return self._checked(line)

    def _checked(self, line: bytes) -> bytes | OversizedLine:
        size = len(line) - 1 if line.endswith(b"\r") else len(line)
        return OversizedLine() if size > self._max else line
