"""Input files: COPY ingest, reads, listing and soft deletion."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

import psycopg

from fusillade.core.idempotency import IdempotencyKey
from fusillade.core.ids import format_id
from fusillade.core.models import (
    FilePurpose,
    FileRecord,
    RequestTemplate,
)
from fusillade.core.results import ResultLine, result_file_bytes
from fusillade.errors import NotFound, ValidationError
from fusillade.ids import next_uuid7
from fusillade.serde import structure
from fusillade.store.interface import Page, with_result_size
from fusillade.store.postgres._base import PostgresBase
from fusillade.store.postgres._copy import copy_templates

_COPY_TEMPLATES = (
    "COPY request_templates "
    "(file_id, line_number, custom_id, endpoint, method, path, model, body, api_key) "
    "FROM STDIN"
)


class FileQueries(PostgresBase):
    if TYPE_CHECKING:  # ResultQueries', beside this class in PostgresRepository

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
        """Store a file of templates with ``COPY``, in bounded memory.

        ``templates`` may be a validating stream: if it raises, the transaction rolls
        back and nothing of the file is stored. They are formatted and sent a block at a
        time, in this thread (see ``_copy``). ``size_bytes`` defaults to the sum of the
        bodies' UTF-8 lengths.

        ``idempotency`` is claimed first, in the same transaction (``_claim_key``): a
        concurrent upload with the key waits for this one's end, and a replay reads the
        file it names (``templates`` are then not read).
        """
        file_id = next_uuid7()
        with self._tx() as cur:
            # The COPY grows with the file; a claim may wait for another upload's COPY.
            cur.execute(self.q.lift_statement_timeout)
            replay = None
            if idempotency is not None:
                replay = self._claim_key(cur, owner, idempotency, file_id, now)
            if replay is None:
                size, lines = self._copy_file(
                    cur,
                    owner,
                    file_id,
                    filename,
                    templates,
                    now=now,
                    size_bytes=size_bytes,
                    expires_at=expires_at,
                )
        if replay is not None:
            return self.get_file(owner, replay)
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

    def _copy_file(
        self,
        cur: psycopg.Cursor[dict[str, Any]],
        owner: str,
        file_id: UUID,
        filename: str,
        templates: Iterable[RequestTemplate],
        *,
        now: datetime,
        size_bytes: int | None,
        expires_at: datetime | None,
    ) -> tuple[int, int]:
        """Insert the file row and COPY its templates; its size and line count."""
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
        cur.execute(
            self.q.set_file_stats,
            {
                "id": file_id,
                "bytes": size,
                "line_count": stats.rows,
                "models": sorted(stats.models),
            },
        )
        return size, stats.rows

    def get_file(self, owner: str, file_id: UUID, *, sized: bool = True) -> FileRecord:
        """A live file of ``owner``; an output or error file carries its size once its
        batch is frozen (``_sized``). ``sized=False`` skips that (its ``bytes`` may be 0):
        for a caller that reads the content anyway, which a first sizing would read twice."""
        with self._tx() as cur:
            row = cur.execute(self.q.get_file, {"id": file_id, "owner": owner}).fetchone()
        if row is None:
            raise NotFound("file", file_id)
        record = structure(row, FileRecord)
        return self._sized([record])[0] if sized else record

    def list_files(
        self,
        owner: str,
        *,
        after: UUID | None = None,
        limit: int = 20,
        purposes: Collection[FilePurpose] | None = None,
        ascending: bool = False,
    ) -> Page[FileRecord]:
        """A page of ``owner``'s live files, newest first (oldest with ``ascending``),
        of any of ``purposes`` (``None``: every purpose), after the cursor file ``after``.

        Raises:
            ValidationError: ``after`` is not one of the owner's live files.
        """
        with self._tx() as cur:
            if (
                after is not None
                and cur.execute(self.q.get_file, {"id": after, "owner": owner}).fetchone() is None
            ):
                raise ValidationError(
                    f"after: no file with id {format_id('file', after)}", param="after"
                )
            rows = cur.execute(
                self.q.list_files_asc if ascending else self.q.list_files,
                {
                    "owner": owner,
                    "after": after,
                    "limit": limit + 1,
                    "purposes": sorted(p.value for p in purposes) if purposes is not None else None,
                },
            ).fetchall()
        items = self._sized([structure(r, FileRecord) for r in rows[:limit]])
        return Page(tuple(items), has_more=len(rows) > limit)

    def _sized(self, records: list[FileRecord]) -> list[FileRecord]:
        """``records`` with the real ``bytes`` of each output or error file whose batch is
        frozen (its content can no longer change); 0 while the batch runs.

        The sizes are stored on the batch row with the (version, frozen completed count)
        they hold for (``set_result_file_sizes.sql``). A missing or stale one is computed
        by formatting the batch's results as a download does: one pass, once per batch
        and retry.
        """
        batch_ids = sorted({r.batch_id for r in records if r.batch_id is not None})
        if not batch_ids:
            return records
        with self._tx() as cur:
            rows = cur.execute(self.q.get_result_file_sizes, {"batch_ids": batch_ids}).fetchall()
        sizes: dict[UUID, tuple[int, int]] = {}
        for row in rows:
            completed = row["frozen_completed"]
            if completed is None:
                continue
            if (row["sized_version"], row["sized_completed"]) == (row["version"], completed):
                sizes[row["id"]] = (row["output_bytes"], row["error_bytes"])
                continue
            output = result_file_bytes(self.iter_results(None, row["id"], errors=False))
            error = result_file_bytes(self.iter_results(None, row["id"], errors=True))
            with self._tx() as cur:
                cur.execute(
                    self.q.set_result_file_sizes,
                    {
                        "id": row["id"],
                        "version": row["version"],
                        "completed": completed,
                        "output_bytes": output,
                        "error_bytes": error,
                    },
                )
            sizes[row["id"]] = (output, error)
        return [with_result_size(r, sizes) for r in records]

    def delete_file(self, owner: str, file_id: UUID, *, now: datetime) -> None:
        with self._tx() as cur:
            row = cur.execute(
                self.q.soft_delete_file, {"id": file_id, "owner": owner, "now": now}
            ).fetchone()
        if row is None:
            raise NotFound("file", file_id)

    def iter_templates(self, owner: str, file_id: UUID) -> Iterator[RequestTemplate]:
        """The templates of an input file in line order, one page per connection use."""
        record = self.get_file(owner, file_id, sized=False)
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
