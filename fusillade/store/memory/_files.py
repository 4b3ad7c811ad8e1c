"""Input files in memory."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING
from uuid import UUID

import attrs

from fusillade.core.models import (
    FilePurpose,
    FileRecord,
    RequestTemplate,
)
from fusillade.errors import NotFound, ValidationError
from fusillade.store.interface import (
    Page,
)
from fusillade.store.memory._base import MemoryBase
from fusillade.store.memory._rows import _File, _no_nul

if TYPE_CHECKING:
    pass


class FileParts(MemoryBase):
    def create_file(
        self,
        owner: str,
        filename: str,
        templates: Iterable[RequestTemplate],
        *,
        now: datetime,
        size_bytes: int | None = None,
        expires_at: datetime | None = None,
    ) -> FileRecord:
        """Store a file of templates; if ``templates`` raises, nothing is stored."""
        # Consumed before the lock: a validating stream may be slow or raise.
        items = list(templates)
        _no_nul(owner, filename)
        for t in items:
            _no_nul(t.custom_id, t.model, t.body, t.path, t.method, t.endpoint, t.api_key)
        size = sum(len(t.body.encode()) for t in items) if size_bytes is None else size_bytes
        with self._lock:
            record = FileRecord(
                id=self._new_id(),
                owner=owner,
                filename=filename,
                purpose=FilePurpose.BATCH,
                bytes=size,
                line_count=len(items),
                created_at=now,
                expires_at=expires_at,
            )
            self._files[record.id] = _File(record, tuple(sorted({t.model for t in items})))
            self._templates[record.id] = items
        return record

    def get_file(self, owner: str, file_id: UUID) -> FileRecord:
        with self._lock:
            f = self._live_file(owner, file_id)
        if f is None:
            raise NotFound("file", file_id)
        return f.record

    def list_files(
        self,
        owner: str,
        *,
        after: UUID | None = None,
        limit: int = 20,
        purpose: FilePurpose | None = None,
    ) -> Page[FileRecord]:
        with self._lock:
            if after is not None and self._live_file(owner, after) is None:
                raise ValidationError(f"after: no file with id {after}", param="after")
            found = sorted(
                (
                    f.record
                    for f in self._files.values()
                    if f.record.owner == owner
                    and f.deleted_at is None
                    and (after is None or f.record.id < after)
                    and (purpose is None or f.record.purpose is purpose)
                ),
                key=lambda r: r.id,
                reverse=True,
            )
        return Page(tuple(found[:limit]), has_more=len(found) > limit)

    def delete_file(self, owner: str, file_id: UUID, *, now: datetime) -> None:
        with self._lock:
            f = self._live_file(owner, file_id)
            if f is None:
                raise NotFound("file", file_id)
            self._files[file_id] = attrs.evolve(f, deleted_at=now)

    def iter_templates(self, owner: str, file_id: UUID) -> Iterator[RequestTemplate]:
        """The templates of an input file in line order (the api key is never returned)."""
        record = self.get_file(owner, file_id)
        if record.purpose is not FilePurpose.BATCH:
            raise NotFound("input file", file_id)
        with self._lock:
            items = [attrs.evolve(t, api_key=None) for t in self._templates[file_id]]
        yield from items
