"""``fusillade results BATCH --follow -o FILE``: a batch's output lines appended to FILE
as they are recorded, until the batch ends; restarted, it resumes where it stopped.

Beside FILE, ``FILE.cursor`` (JSON) holds the batch id, the cursor of the last line
written (``GET /v1/batches/{id}/results``' ``X-Fusillade-Cursor``, or
``Engine.read_live``'s) and FILE's length up to that line. Each read's lines are appended
and synced to disk before the cursor file is replaced, so a follower stopped at any
point (Ctrl-C, a closed connection, a crash) restarts from the cursor file: FILE is cut
back to the length it names (dropping lines appended after it, which the next read
gives again), and every line is in FILE exactly once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import attrs

from fusillade.errors import FusilladeError


@attrs.frozen
class LiveRead:
    """One read of a batch's output after a cursor: the lines (the output file's bytes),
    the cursor after them, whether they were the last and the batch's status."""

    body: bytes
    cursor: str | None
    complete: bool
    status: str


def cursor_path(output: Path) -> Path:
    """Where the follower of ``output`` keeps its cursor."""
    return output.with_name(output.name + ".cursor")


def follow_to_file(batch_id: str, read: Callable[[str | None], LiveRead], output: Path) -> LiveRead:
    """Append the batch's output lines to ``output`` (``read(cursor)`` gives the next),
    resuming after ``output``'s cursor file, until a read is complete; returns it."""
    state = cursor_path(output)
    cursor, size = _resume(batch_id, output, state)
    with output.open("r+b" if output.exists() else "wb") as out:
        out.truncate(size)
        out.seek(size)
        while True:
            got = read(cursor)
            if got.body:
                out.write(got.body)
                out.flush()
                os.fsync(out.fileno())
                size += len(got.body)
            if got.cursor != cursor:
                cursor = got.cursor
                _save(state, {"batch_id": batch_id, "cursor": cursor, "bytes": size})
            if got.complete:
                return got


def _resume(batch_id: str, output: Path, state: Path) -> tuple[str | None, int]:
    if not state.exists():
        if output.exists() and output.stat().st_size > 0:
            raise FusilladeError(
                f"{output} exists and has no {state.name} to resume from: "
                "remove it or write to another file"
            )
        return None, 0
    try:
        saved: dict[str, Any] = json.loads(state.read_text(encoding="utf-8"))
        cursor, size, owner = saved["cursor"], int(saved["bytes"]), saved["batch_id"]
    except (ValueError, KeyError, TypeError):
        raise FusilladeError(f"{state} is not a cursor file: remove it and {output}") from None
    if owner != batch_id:
        raise FusilladeError(f"{state} follows {owner}, not {batch_id}: write to another file")
    if not output.exists() or output.stat().st_size < size:
        raise FusilladeError(
            f"{output} is shorter than {state.name} says: remove both to start over"
        )
    return cursor, size


def _save(state: Path, data: dict[str, Any]) -> None:
    tmp = state.with_name(state.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        _write(f, data)
    tmp.replace(state)


def _write(f: IO[str], data: dict[str, Any]) -> None:
    json.dump(data, f)
    f.write("\n")
    f.flush()
    os.fsync(f.fileno())
