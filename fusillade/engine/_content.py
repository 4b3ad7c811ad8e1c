"""A file's content as its bytes: the one rendering of input, output and error files.

The download route, ``fusillade results`` on the database, ``fusillade run`` and the
benchmarks all read ``Engine.file_content``, so what each writes is byte for byte what
the server sends: every line formatted (``format_input_line`` for an input file's
templates, ``format_result_line`` for a batch's results) and ended by ``\\n``, in UTF-8.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterator
from typing import Final, TypeVar

from fusillade.core.models import FileRecord

T = TypeVar("T")

LINES_PER_CHUNK: Final = 1000
"""Lines formatted per worker-thread hop (one hop per line capped downloads at a few
thousand lines a second)."""


def chunk_reader(lines: Iterator[T], fmt: Callable[[T], str]) -> Callable[[], bytes | None]:
    """A function returning the next ``LINES_PER_CHUNK`` lines of ``lines``, formatted,
    or ``None`` at the end; it blocks (it reads the repository), so it runs in a thread."""
    return functools.partial(_next_chunk, lines, fmt)


def _next_chunk(lines: Iterator[T], fmt: Callable[[T], str]) -> bytes | None:
    out: list[str] = []
    for item in lines:
        out.append(fmt(item))
        if len(out) >= LINES_PER_CHUNK:
            break
    if not out:
        return None
    return ("\n".join(out) + "\n").encode("utf-8")


class Content:
    """The content of one file: an async iterator of ``bytes`` chunks.

    The first chunk is read when the content is opened (``Engine.file_content``), so a
    failure surfaces there, before a server answers. A plain async iterator (not an
    async generator): a consumer that stops early leaves nothing to finalise, since the
    repository's iterators hold no connection between pages.

    Attributes:
        record: the file (``bytes`` not worked out for an output or error file: reading
            it would read every result the content is about to).
        incomplete: an output or error file of a batch that was not terminal when the
            content was opened: more lines may come (``Engine.read_live`` follows them).
    """

    def __init__(
        self,
        record: FileRecord,
        first: bytes | None,
        read_next: Callable[[], Awaitable[bytes | None]],
        *,
        incomplete: bool = False,
    ) -> None:
        self.record = record
        self.incomplete = incomplete
        self._next = first
        self._read_next = read_next  # the next chunk, read in a worker thread

    def __aiter__(self) -> Content:
        return self

    async def __anext__(self) -> bytes:
        chunk = self._next
        if chunk is None:
            raise StopAsyncIteration
        self._next = await self._read_next()
        return chunk
