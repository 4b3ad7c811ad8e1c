"""Validated templates held between an upload and its ``COPY``: memory first, then disk.

The upload is validated once, while it arrives; what is kept is the validator's output
(each template's ``custom_id``, ``model``, ``path`` and compact ``body``), so storing
it does not parse the JSON a second time. Each ``write`` appends one record: two
little-endian ``uint32`` (the number of templates, the payload's length) and the payload,
the four strings of each template in turn, joined by NUL and encoded as UTF-8. A valid
template never holds NUL (PostgreSQL text cannot), so splitting on it gives the strings
back, and a whole record is encoded, decoded and split in three calls instead of four
per template. Memory is bounded by ``max_memory``; past it the ``SpooledTemporaryFile``
moves to a temporary file.
"""

from __future__ import annotations

import struct
import tempfile
from collections.abc import Iterable, Iterator
from typing import Final

from fusillade.core.models import RequestTemplate

_HEADER: Final = struct.Struct("<II")
_FIELDS: Final = 4


class TemplateSpool:
    """Append templates, then iterate them once in order; ``close()`` deletes the data."""

    def __init__(self, max_memory: int) -> None:
        self._file = tempfile.SpooledTemporaryFile(max_size=max_memory)  # noqa: SIM115 - closed by close()
        self.count = 0

    def write(self, templates: Iterable[RequestTemplate]) -> None:
        """Append templates; they must be valid (UTF-8 encodable, without NUL).

        Raises:
            ValueError: a template holds NUL.
        """
        fields: list[str] = []
        for t in templates:
            fields += (t.custom_id, t.model, t.path, t.body)
        if not fields:
            return
        text = "\x00".join(fields)
        if text.count("\x00") != len(fields) - 1:
            raise ValueError("a template to spool holds NUL")
        payload = text.encode()
        self._file.write(_HEADER.pack(len(fields) // _FIELDS, len(payload)) + payload)
        self.count += len(fields) // _FIELDS

    def __iter__(self) -> Iterator[RequestTemplate]:
        """The templates in the order written (reads from the start)."""
        self._file.seek(0)
        while header := self._file.read(_HEADER.size):
            count, size = _HEADER.unpack(header)
            payload = self._file.read(size)
            if len(header) != _HEADER.size or len(payload) != size:  # pragma: no cover
                raise ValueError("truncated template spool")  # only a torn write could
            fields = payload.decode().split("\x00")
            if len(fields) != _FIELDS * count:  # pragma: no cover - as above
                raise ValueError("corrupt template spool")
            # RequestTemplate(custom_id, model, body, path), the fields being
            # custom_id, model, path, body for each template in turn.
            yield from map(RequestTemplate, fields[0::4], fields[1::4], fields[3::4], fields[2::4])

    def close(self) -> None:
        self._file.close()
