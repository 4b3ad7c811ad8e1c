"""Input files: COPY ingest, reads, listing and soft deletion."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime
from uuid import UUID

from fusillade.core.models import (
    FilePurpose,
    FileRecord,
    RequestTemplate,
)
from fusillade.errors import NotFound, ValidationError
from fusillade.ids import next_uuid7
from fusillade.serde import structure
from fusillade.store.interface import (
    Page,
)
from fusillade.store.postgres._base import PostgresBase
from fusillade.store.postgres._copy import copy_templates

_COPY_TEMPLATES = (
    "COPY request_templates "
    "(file_id, line_number, custom_id, endpoint, method, path, model, body, api_key) "
    "FROM STDIN"
)


class FileQueries(PostgresBase):
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
        """Store a file of templates with ``COPY``, in bounded memory.

        ``templates`` may be a validating stream: if it raises, the transaction rolls
        back and nothing of the file is stored. They are formatted and sent a block at a
        time, in this thread (see ``_copy``). ``size_bytes`` defaults to the sum of the
        bodies' UTF-8 lengths.
        """
        file_id = next_uuid7()
        with self._tx() as cur:
            cur.execute(self.q.lift_statement_timeout)
            cur.execute(
                self.q.insert_file,
                {
                    "id": file_id,
                    "owner": owner,
                    "filename": filename,
                    "purpose": FilePurpose.BATCH.value,
                    "batch_id": None,
                    "created_at": now,
                    "expires_at": expires_at,
                },
            )
            stats = copy_templates(
                cur, _COPY_TEMPLATES, file_id, templates, count_bytes=size_bytes is None
            )
            size = stats.body_bytes if size_bytes is None else size_bytes
            lines = stats.rows
            cur.execute(
                self.q.set_file_stats,
                {"id": file_id, "bytes": size, "line_count": lines, "models": sorted(stats.models)},
            )
        return FileRecord(
            id=file_id,
            owner=owner,
            filename=filename,
            purpose=FilePurpose.BATCH,
            bytes=size,
            line_count=lines,
            created_at=now,
            expires_at=expires_at,
        )

    def get_file(self, owner: str, file_id: UUID) -> FileRecord:
        with self._tx() as cur:
            row = cur.execute(self.q.get_file, {"id": file_id, "owner": owner}).fetchone()
        if row is None:
            raise NotFound("file", file_id)
        return structure(row, FileRecord)

    def list_files(
        self,
        owner: str,
        *,
        after: UUID | None = None,
        limit: int = 20,
        purpose: FilePurpose | None = None,
    ) -> Page[FileRecord]:
        with self._tx() as cur:
            if (
                after is not None
                and cur.execute(self.q.get_file, {"id": after, "owner": owner}).fetchone() is None
            ):
                raise ValidationError(f"after: no file with id {after}", param="after")
            rows = cur.execute(
                self.q.list_files,
                {
                    "owner": owner,
                    "after": after,
                    "limit": limit + 1,
                    "purpose": purpose.value if purpose else None,
                },
            ).fetchall()
        items = tuple(structure(r, FileRecord) for r in rows[:limit])
        return Page(items, has_more=len(rows) > limit)

    def delete_file(self, owner: str, file_id: UUID, *, now: datetime) -> None:
        with self._tx() as cur:
            row = cur.execute(
                self.q.soft_delete_file, {"id": file_id, "owner": owner, "now": now}
            ).fetchone()
        if row is None:
            raise NotFound("file", file_id)

    def iter_templates(self, owner: str, file_id: UUID) -> Iterator[RequestTemplate]:
        """The templates of an input file in line order, one page per connection use."""
        record = self.get_file(owner, file_id)
        if record.purpose is not FilePurpose.BATCH:
            raise NotFound("input file", file_id)
        after = 0
        while True:
            with self._tx() as cur:
                rows = cur.execute(
                    self.q.stream_input,
                    {"file_id": file_id, "after_line": after, "limit": 1000},
                ).fetchall()
            for row in rows:
                yield RequestTemplate(
                    custom_id=row["custom_id"],
                    model=row["model"],
                    body=row["body"],
                    path=row["path"],
                    method=row["method"],
                    endpoint=row["endpoint"],
                )
            if len(rows) < 1000:
                return
            after = rows[-1]["line_number"]
