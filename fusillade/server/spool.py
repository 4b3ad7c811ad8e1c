"""Validated templates held between an upload and its ``COPY``: memory first, then disk.

The upload is validated once, while it arrives; what is kept is the validator's output
(each template's ``custom_id``, ``model``, ``path`` and compact ``body``), so storing
it does not parse the JSON a second time. Records are four little-endian ``uint32``
lengths followed by the four UTF-8 strings. Memory is bounded by ``max_memory``; past it
the ``SpooledTemporaryFile`` moves to a temporary file.
"""

from __future__ import annotations

import struct
import tempfile
from collections.abc import Iterable, Iterator
from typing import Final

from fusillade.core.models import RequestTemplate

_HEADER: Final = struct.Struct("<IIII")
_READ: Final = 256 * 1024


class TemplateSpool:
    """Append templates, then iterate them once in order; ``close()`` deletes the data."""

    def __init__(self, max_memory: int) -> None:
        self._file = tempfile.SpooledTemporaryFile(max_size=max_memory)  # noqa: SIM115 - closed by close()
        self.count = 0

    def write(self, templates: Iterable[RequestTemplate]) -> None:
        """Append templates; they must be valid (every string encodable as UTF-8)."""
        parts: list[bytes] = []
        for t in templates:
            fields = (
                t.custom_id.encode(),
                t.model.encode(),
                t.path.encode(),
                t.body.encode(),
            )
            parts.append(_HEADER.pack(*map(len, fields)))
            parts.extend(fields)
            self.count += 1
        if parts:
            self._file.write(b"".join(parts))

    def __iter__(self) -> Iterator[RequestTemplate]:
        """The templates in the order written (reads from the start)."""
        self._file.seek(0)
        buf = b""
        pos = 0
        while True:
            have = len(buf) - pos
            need = _HEADER.size if have < _HEADER.size else _record_size(buf, pos)
            if have < need:
                more = self._file.read(max(_READ, need - have))
                if not more:
                    if pos != len(buf):  # pragma: no cover - only a torn write could cause it
                        raise ValueError("truncated template spool")
                    return
                buf = buf[pos:] + more
                pos = 0
                continue
            a, b, c, d = _HEADER.unpack_from(buf, pos)
            pos += _HEADER.size
            custom_id = buf[pos : pos + a].decode()
            pos += a
            model = buf[pos : pos + b].decode()
            pos += b
            path = buf[pos : pos + c].decode()
            pos += c
            body = buf[pos : pos + d].decode()
            pos += d
            yield RequestTemplate(custom_id=custom_id, model=model, body=body, path=path)

    def close(self) -> None:
        self._file.close()


def _record_size(buf: bytes, pos: int) -> int:
    lengths: tuple[int, ...] = _HEADER.unpack_from(buf, pos)
    return _HEADER.size + sum(lengths)
