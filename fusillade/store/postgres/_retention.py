"""Retention: the purge of expired and deleted files, old finished batches' requests and
stopped daemons, in bounded chunks of short transactions (docs/semantics.md)."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING
from uuid import UUID

from fusillade.store.interface import PurgeStats
from fusillade.store.postgres._base import PostgresBase

if TYPE_CHECKING:
    from fusillade.core.models import BatchView


class RetentionQueries(PostgresBase):
    if TYPE_CHECKING:  # BatchQueries', beside this class in PostgresRepository

        def get_batch(self, owner: str | None, batch_id: UUID, *, now: datetime) -> BatchView: ...

    def purge(
        self,
        *,
        now: datetime,
        finished_before: datetime | None,
        stopped_before: datetime,
        limit: int = 1000,
    ) -> PurgeStats:
        with self._tx() as cur:
            expired = len(
                cur.execute(self.q.purge_expire_files, {"now": now, "limit": limit}).fetchall()
            )
        files, templates, files_more = self._purge_file_chunk(now, limit)
        if finished_before is not None:
            # a finished batch nobody read is frozen by a read (get_batch), found here
            # once its window ended before the cutoff
            with self._tx() as cur:
                rows = cur.execute(
                    self.q.purge_freeze_candidates, {"before": finished_before, "limit": limit}
                ).fetchall()
            for row in rows:
                self.get_batch(None, row["id"], now=now)
        batches, requests, batches_more = self._purge_batch_chunk(now, finished_before, limit)
        with self._tx() as cur:
            daemons = len(
                cur.execute(
                    self.q.purge_daemons, {"stopped_before": stopped_before, "limit": limit}
                ).fetchall()
            )
        return PurgeStats(
            expired_files=expired,
            purged_files=files,
            templates=templates,
            batches=batches,
            requests=requests,
            daemons=daemons,
            more=expired >= limit or files_more or batches_more or daemons >= limit,
        )

    def _purge_file_chunk(self, now: datetime, limit: int) -> tuple[int, int, bool]:
        """A chunk of one deleted input file's templates: (files done, rows, more)."""
        with self._tx() as cur:
            row = cur.execute(self.q.purge_pick_file).fetchone()
            if row is None:
                return 0, 0, False
            query = self.q.purge_blank_templates if row["keep"] else self.q.purge_delete_templates
            lines = cur.execute(
                query, {"file_id": row["id"], "after": row["purged_through"], "limit": limit}
            ).fetchall()
            done = len(lines) < limit
            cur.execute(
                self.q.purge_file_progress,
                {
                    "file_id": row["id"],
                    "through": max((r["line_number"] for r in lines), default=0),
                    "done": done,
                    "now": now,
                },
            )
        return int(done), len(lines), True

    def _purge_batch_chunk(
        self, now: datetime, finished_before: datetime | None, limit: int
    ) -> tuple[int, int, bool]:
        """A chunk of one finished batch's requests: (batches done, rows, more)."""
        with self._tx() as cur:
            batch = cur.execute(
                self.q.purge_pick_batch, {"now": now, "finished_before": finished_before}
            ).fetchone()
            if batch is None:
                return 0, 0, False
            deleted = len(
                cur.execute(
                    self.q.purge_batch_requests, {"batch_id": batch["id"], "limit": limit}
                ).fetchall()
            )
            done = deleted < limit
            if done:
                cur.execute(
                    self.q.purge_batch_done,
                    {
                        "batch_id": batch["id"],
                        "input_file_id": batch["input_file_id"],
                        "output_file_id": batch["output_file_id"],
                        "error_file_id": batch["error_file_id"],
                        "now": now,
                    },
                )
        return int(done), deleted, True

    def purge_preview(
        self, *, now: datetime, finished_before: datetime | None, stopped_before: datetime
    ) -> PurgeStats:
        with self._tx() as cur:
            row = cur.execute(
                self.q.purge_preview,
                {"now": now, "finished_before": finished_before, "stopped_before": stopped_before},
            ).fetchone()
        assert row is not None
        return PurgeStats(
            expired_files=row["expired_files"],
            purged_files=row["purged_files"],
            templates=row["templates"],
            batches=row["batches"],
            requests=row["requests"],
            daemons=row["daemons"],
        )
