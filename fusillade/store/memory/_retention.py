"""Retention in memory: the purge of ``fusillade.store.postgres._retention``, with the same
rules; each part takes at most ``limit`` rows of one file or batch per call."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import attrs

from fusillade.store.interface import PurgeStats
from fusillade.store.memory._base import MemoryBase
from fusillade.store.memory._rows import UNSETTLED


class RetentionParts(MemoryBase):
    def _purgeable_batches(self, now: datetime, finished_before: datetime | None) -> list[UUID]:
        out = []
        for b in self._batches.values():
            if b.id in self._purged_batches or b.frozen_counts is None:
                continue
            finished = b.last_finished_at or b.created_at
            old = finished_before is not None and finished < finished_before
            expiry = self._output_expires.get(b.id)
            if old or (expiry is not None and expiry <= now):
                out.append(b.id)
        return out

    def _files_to_purge(self) -> list[UUID]:
        """Deleted input files with content, no unfinished batch reading them."""
        reading = {b.input_file_id for b in self._batches.values() if b.frozen_counts is None}
        gone = [
            (f.deleted_at, i)
            for i, f in self._files.items()
            if f.deleted_at is not None
            and f.record.batch_id is None
            and i not in self._purged_files
            and i not in reading
        ]
        return [i for _, i in sorted(gone)]

    def purge(
        self,
        *,
        now: datetime,
        finished_before: datetime | None,
        stopped_before: datetime,
        limit: int = 1000,
    ) -> PurgeStats:
        with self._lock:
            expiring = sorted(
                (
                    f
                    for f in self._files.values()
                    if f.deleted_at is None
                    and f.record.expires_at is not None
                    and f.record.expires_at <= now
                ),
                key=lambda f: f.record.expires_at or now,
            )[:limit]
            for f in expiring:
                self._files[f.record.id] = attrs.evolve(f, deleted_at=f.record.expires_at)
            files, templates, files_more = self._purge_file(now)
            if finished_before is not None:
                for b in list(self._batches.values()):
                    if b.frozen_counts is None and b.expires_at < finished_before:
                        self.get_batch(None, b.id, now=now)  # type: ignore[attr-defined]
            batches, requests, batches_more = self._purge_batch(now, finished_before, limit)
            stopped = sorted(
                (
                    d
                    for d in self._daemons.values()
                    if d.status != "running"
                    and d.stopped_at is not None
                    and d.stopped_at < stopped_before
                ),
                key=lambda d: d.stopped_at or now,
            )[:limit]
            for d in stopped:
                del self._daemons[d.info.id]
                for key in [k for k in self._leases if k[1] == d.info.id]:
                    del self._leases[key]
        return PurgeStats(
            expired_files=len(expiring),
            purged_files=files,
            templates=templates,
            batches=batches,
            requests=requests,
            daemons=len(stopped),
            more=len(expiring) >= limit or files_more or batches_more or len(stopped) >= limit,
        )

    def _purge_file(self, now: datetime) -> tuple[int, int, bool]:
        todo = self._files_to_purge()
        if not todo:
            return 0, 0, False
        file_id = todo[0]
        templates = self._templates.get(file_id, [])
        keep = any(
            b.input_file_id == file_id and b.id not in self._purged_batches
            for b in self._batches.values()
        )
        if keep:
            self._templates[file_id] = [attrs.evolve(t, body="", api_key=None) for t in templates]
        else:
            self._templates[file_id] = []
        self._purged_files.add(file_id)
        return 1, len(templates), True

    def _purge_batch(
        self, now: datetime, finished_before: datetime | None, limit: int
    ) -> tuple[int, int, bool]:
        todo = self._purgeable_batches(now, finished_before)
        if not todo:
            return 0, 0, False
        b = self._batches[todo[0]]
        ids = self._batch_rows.get(b.id, [])
        chunk, rest = ids[:limit], ids[limit:]
        for rid in chunk:
            row = self._rows.pop(rid)
            self._by_state[row.req.state].discard(rid)
        self._batch_rows[b.id] = rest
        if len(chunk) < limit:
            self._purged_batches.add(b.id)
            for fid in (b.output_file_id, b.error_file_id):
                f = self._files[fid]
                if f.deleted_at is None:
                    self._files[fid] = attrs.evolve(f, deleted_at=now)
            still_read = any(
                o.input_file_id == b.input_file_id
                and o.id != b.id
                and o.id not in self._purged_batches
                for o in self._batches.values()
            )
            if not still_read:
                self._purged_files.discard(b.input_file_id)
            return 1, len(chunk), True
        return 0, len(chunk), True

    def purge_preview(
        self, *, now: datetime, finished_before: datetime | None, stopped_before: datetime
    ) -> PurgeStats:
        with self._lock:
            expired = [
                f
                for f in self._files.values()
                if f.deleted_at is None
                and f.record.expires_at is not None
                and f.record.expires_at <= now
            ]
            reading = {b.input_file_id for b in self._batches.values() if b.frozen_counts is None}
            gone = [
                i
                for i, f in self._files.items()
                if f.record.batch_id is None
                and i not in self._purged_files
                and i not in reading
                and (
                    f.deleted_at is not None
                    or (f.record.expires_at is not None and f.record.expires_at <= now)
                )
            ]
            batches = self._purgeable_batches(now, finished_before)
            if finished_before is not None:  # settled, not read yet: frozen first
                for b in self._batches.values():
                    rows = list(self._rows_of(b.id))
                    if (
                        b.frozen_counts is None
                        and b.expires_at < finished_before
                        and not any(r.req.state in UNSETTLED for r in rows)
                        and max(
                            (r.req.finished_at or b.created_at for r in rows), default=b.created_at
                        )
                        < finished_before
                    ):
                        batches.append(b.id)
            return PurgeStats(
                expired_files=len(expired),
                purged_files=len(gone),
                templates=sum(len(self._templates.get(i, [])) for i in gone),
                batches=len(batches),
                requests=sum(len(self._batch_rows.get(b, [])) for b in batches),
                daemons=sum(
                    1
                    for d in self._daemons.values()
                    if d.status != "running"
                    and d.stopped_at is not None
                    and d.stopped_at < stopped_before
                ),
            )
