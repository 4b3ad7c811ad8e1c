"""Input files in memory."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING
from uuid import UUID

import attrs

from fusillade.core.idempotency import IdempotencyKey
from fusillade.core.ids import format_id
from fusillade.core.models import (
    FilePurpose,
    FileRecord,
    RequestTemplate,
)
from fusillade.core.results import ResultLine, result_file_bytes
from fusillade.errors import NotFound, ValidationError
from fusillade.store.interface import Page, with_result_size
from fusillade.store.memory._base import MemoryBase
from fusillade.store.memory._rows import _File, _no_nul


class FileParts(MemoryBase):
    if TYPE_CHECKING:  # ResultParts', beside this class in MemoryRepository

        def iter_results(
            self, owner: str | None, batch_id: UUID, *, errors: bool, page_size: int = 5000
        ) -> Iterator[ResultLine]: ...

    def create_file(
        self,
        owner: str,
        filename: str,
        templates: Iterable[RequestTemplate],
        *,
        now: datetime,
        size_bytes: int | None = None,
        expires_at: datetime | None = None,
        idempotency: IdempotencyKey | None = None,
    ) -> FileRecord:
        """Store a file of templates; if ``templates`` raises, nothing is stored.

        ``idempotency``: a live key answers with the file it created (``_replay_of``)."""
        # Consumed before the lock: a validating stream may be slow or raise.
        items = list(templates)
        _no_nul(owner, filename)
        for t in items:
            _no_nul(t.custom_id, t.model, t.body, t.path, t.method, t.endpoint, t.api_key)
        size = sum(len(t.body.encode()) for t in items) if size_bytes is None else size_bytes
        with self._lock:
            replay = self._replay_of(owner, idempotency, now)
            if replay is not None:
                return self.get_file(owner, replay)
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
            self._remember(owner, idempotency, record.id, now)
        return record

    def get_file(self, owner: str, file_id: UUID, *, sized: bool = True) -> FileRecord:
        with self._lock:
            f = self._live_file(owner, file_id)
        if f is None:
            raise NotFound("file", file_id)
        return self._sized([f.record])[0] if sized else f.record

    def list_files(
        self,
        owner: str,
        *,
        after: UUID | None = None,
        limit: int = 20,
        purposes: Collection[FilePurpose] | None = None,
        ascending: bool = False,
    ) -> Page[FileRecord]:
        with self._lock:
            if after is not None and self._live_file(owner, after) is None:
                raise ValidationError(
                    f"after: no file with id {format_id('file', after)}", param="after"
                )
            found = sorted(
                (
                    f.record
                    for f in self._files.values()
                    if f.record.owner == owner
                    and f.deleted_at is None
                    and (
                        after is None or (f.record.id > after if ascending else f.record.id < after)
                    )
                    and (purposes is None or f.record.purpose in purposes)
                ),
                key=lambda r: r.id,
                reverse=not ascending,
            )
        return Page(tuple(self._sized(found[:limit])), has_more=len(found) > limit)

    def _sized(self, records: list[FileRecord]) -> list[FileRecord]:
        """``records`` with the real ``bytes`` of each output or error file whose batch
        is frozen (computed on every read here: the store is small)."""
        sizes: dict[UUID, tuple[int, int]] = {}
        for batch_id in {r.batch_id for r in records if r.batch_id is not None}:
            with self._lock:
                frozen = self._batch(None, batch_id).frozen_counts is not None
            if frozen:
                sizes[batch_id] = (
                    result_file_bytes(self.iter_results(None, batch_id, errors=False)),
                    result_file_bytes(self.iter_results(None, batch_id, errors=True)),
                )
        return [with_result_size(r, sizes) for r in records]

    def delete_file(self, owner: str, file_id: UUID, *, now: datetime) -> None:
        with self._lock:
            f = self._live_file(owner, file_id)
            if f is None:
                raise NotFound("file", file_id)
            self._files[file_id] = attrs.evolve(f, deleted_at=now)

    def iter_templates(self, owner: str, file_id: UUID) -> Iterator[RequestTemplate]:
        """The templates of an input file in line order (the api key is never returned)."""
        record = self.get_file(owner, file_id, sized=False)
        if record.purpose is not FilePurpose.BATCH:
            raise NotFound("input file", file_id)
        with self._lock:
            items = [attrs.evolve(t, api_key=None) for t in self._templates[file_id]]
        yield from items
