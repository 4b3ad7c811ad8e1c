"""A file's templates into ``request_templates``: COPY text formatted a block at a time.

Theory of operation
-------------------
``write_row`` formats each row field by field; here ``BLOCK_ROWS`` rows are formatted
with one f-string each and escaped together: when the counts of tabs, line breaks and
NULs in the block show that no field holds one, doubling the backslashes of the whole
block is all the escaping COPY's text format needs (NULL, a missing api key, stands as
NUL until then: PostgreSQL text cannot hold NUL, so it is never data). A block where a
field does hold one is formatted again row by row, escaping each field.

Measured alternatives that did not pay: a writer thread sending blocks while the caller
validates, in several COPY statements so that the server's per-row foreign-key checks
(run at the end of each statement, about as long as storing the rows) overlap the
caller's work. On 2 shared cores the threads' contention for the GIL cost more than the
overlap saved.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Final
from uuid import UUID

import attrs
import psycopg

from fusillade.core.models import RequestTemplate
from fusillade.errors import StoreError

BLOCK_ROWS: Final = 1000

# COPY's text format: a backslash starts an escape; tab, newline and CR end fields and rows.
_ESCAPES: Final = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_FIELDS: Final = 9  # file_id, line_number, and the seven of a template


@attrs.define
class CopyStats:
    """What was copied: rows, the bodies' UTF-8 bytes (when asked for), the models."""

    rows: int = 0
    body_bytes: int = 0
    models: set[str] = attrs.Factory(set)


def copy_templates(
    cur: psycopg.Cursor[Any],
    sql: str,
    file_id: UUID,
    templates: Iterable[RequestTemplate],
    *,
    count_bytes: bool,
) -> CopyStats:
    """COPY ``templates`` as lines 1, 2, ... of ``file_id`` with ``sql`` (text format,
    the columns: file_id, line_number, custom_id, endpoint, method, path, model, body,
    api_key).

    Raises:
        StoreError: a template holds NUL (PostgreSQL text cannot).
        Whatever ``templates`` raises (the COPY is failed), or the database's error.
    """
    stats = CopyStats()
    with cur.copy(sql) as copy:
        for block in _blocks(str(file_id), templates, stats, count_bytes=count_bytes):
            copy.write(block)
    return stats


def _blocks(
    file_id: str, templates: Iterable[RequestTemplate], stats: CopyStats, *, count_bytes: bool
) -> Iterator[str]:
    batch: list[RequestTemplate] = []
    for t in templates:
        batch.append(t)
        if len(batch) >= BLOCK_ROWS:
            yield _format(file_id, batch, stats, count_bytes=count_bytes)
            batch = []
    if batch:
        yield _format(file_id, batch, stats, count_bytes=count_bytes)


def _format(
    file_id: str, batch: list[RequestTemplate], stats: CopyStats, *, count_bytes: bool
) -> str:
    """COPY text rows for ``batch``, numbered on from ``stats.rows``; updates ``stats``."""
    first = stats.rows + 1
    stats.rows += len(batch)
    stats.models.update(t.model for t in batch)
    if count_bytes:
        stats.body_bytes += sum(
            len(t.body) if t.body.isascii() else len(t.body.encode()) for t in batch
        )
    # Fields written as they are, NULL (no api key) as NUL for now: when the counts show
    # no field holds a tab, a line break or NUL, escaping the whole text at once is right.
    nulls = 0
    parts = []
    for n, t in enumerate(batch, first):
        api_key = t.api_key
        if api_key is None:
            api_key = "\x00"
            nulls += 1
        parts.append(
            f"{file_id}\t{n}\t{t.custom_id}\t{t.endpoint}\t{t.method}\t{t.path}\t{t.model}"
            f"\t{t.body}\t{api_key}\n"
        )
    text = "".join(parts)
    if (
        text.count("\t") == (_FIELDS - 1) * len(batch)
        and text.count("\n") == len(batch)
        and "\r" not in text
        and text.count("\x00") == nulls
    ):
        return text.replace("\\", "\\\\").replace("\x00", "\\N")
    return "".join(_row(file_id, n, t) for n, t in enumerate(batch, first))


def _row(file_id: str, n: int, t: RequestTemplate) -> str:
    fields = (t.custom_id, t.endpoint, t.method, t.path, t.model, t.body, t.api_key)
    if any(f is not None and "\x00" in f for f in fields):
        raise StoreError("database error: PostgreSQL text fields cannot contain NUL (0x00) bytes")
    text = "\t".join("\\N" if f is None else f.translate(_ESCAPES) for f in fields)
    return f"{file_id}\t{n}\t{text}\n"
