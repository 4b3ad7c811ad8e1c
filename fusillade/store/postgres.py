"""The PostgreSQL repository: psycopg 3's sync API over a ``psycopg_pool.ConnectionPool``.

Theory of operation
-------------------
Every statement comes from ``sql/queries`` (loaded once into ``Queries``). Each method
does one short transaction on a pooled connection and returns plain records; nothing
holds a connection while a caller consumes results (``iter_results`` fetches one page
per connection use). Daemon writes are fenced in SQL by (state, owner, attempt); a
fence that fails is a lost race, counted in the returned stats, never raised.

psycopg errors are translated by ``fusillade.store.errors.translate_errors``, the one
boundary for them. Server-side prepared statements are off (``prepare_threshold=None``):
every execution is planned with its real parameters, so a generic plan can never make
a list or claim query slow on a large table (lesson 10). Connections carry a statement
timeout and TCP keepalives, so a silently dropped connection cannot freeze a periodic
query for hours (lesson 4).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import psycopg
import psycopg.errors
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from fusillade.core.batches import derive, needs_freeze
from fusillade.core.models import (
    BatchRecord,
    BatchStatus,
    BatchView,
    FilePurpose,
    FileRecord,
    RequestCounts,
    RequestState,
    RequestTemplate,
)
from fusillade.core.windows import parse_completion_window
from fusillade.errors import Conflict, NotFound, ValidationError
from fusillade.ids import next_uuid7
from fusillade.serde import structure
from fusillade.store.errors import translate_errors
from fusillade.store.interface import (
    AttemptResult,
    BatchSpec,
    ClaimedRequest,
    DaemonInfo,
    Page,
    ReclaimStats,
    RecordStats,
    RequestDetail,
    RequestSummary,
    ResultKind,
    ResultLine,
)
from fusillade.store.sqlfiles import Queries, load_queries

WORK_CHANNEL = "fusillade_work"
CANCEL_CHANNEL = "fusillade_cancel"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ZERO_UUID = UUID(int=0)
# Pending rows of a cancelled batch turned canceled inline by cancel_batch; the rest
# are swept by daemons, so the cancel call stays O(1) for large batches.
_INLINE_SWEEP = 10_000
_COPY_TEMPLATES = (
    "COPY request_templates "
    "(file_id, line_number, custom_id, endpoint, method, path, model, body, api_key) "
    "FROM STDIN"
)


def connection_kwargs(statement_timeout_ms: int) -> dict[str, Any]:
    """Settings for every connection: timeouts, keepalives, no server-side prepares."""
    return {
        "prepare_threshold": None,
        "row_factory": dict_row,
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 5,
        "keepalives_count": 3,
        "connect_timeout": 10,
        "options": f"-c statement_timeout={statement_timeout_ms}",
    }


class PostgresRepository:
    """A ``Repository`` on PostgreSQL. Thread-safe; call it from worker threads."""

    def __init__(
        self,
        conninfo: str,
        *,
        min_size: int = 1,
        max_size: int = 8,
        statement_timeout_ms: int = 30_000,
        queries: Queries | None = None,
    ) -> None:
        self.conninfo = conninfo
        self.q = queries or load_queries()
        self.pool: ConnectionPool[psycopg.Connection[dict[str, Any]]] = ConnectionPool(
            conninfo,
            min_size=min_size,
            max_size=max_size,
            kwargs=connection_kwargs(statement_timeout_ms),
            open=False,
            timeout=30.0,
            name="fusillade",
        )

    def open(self, *, wait: bool = True, timeout: float = 30.0) -> None:
        with translate_errors():
            self.pool.open(wait=wait, timeout=timeout)

    def close(self) -> None:
        self.pool.close()

    def __enter__(self) -> PostgresRepository:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[psycopg.Cursor[dict[str, Any]]]:
        """A cursor inside one transaction (committed on success, rolled back on error)."""
        with translate_errors(), self.pool.connection() as conn, conn.transaction():
            yield conn.cursor()

    def listen(self) -> PostgresListener:
        """A dedicated connection that waits for wake-up notifications."""
        with translate_errors():
            return PostgresListener(self.conninfo, self.q.listen)

    def ping(self) -> None:
        """Raise ``StoreUnavailable`` unless a trivial query succeeds."""
        with self._tx() as cur:
            cur.execute("SELECT 1")

    # ------------------------------------------------------------------ files

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
        back and nothing of the file is stored. ``size_bytes`` defaults to the sum of
        the bodies' UTF-8 lengths.
        """
        file_id = next_uuid7()
        lines = 0
        body_bytes = 0
        models: set[str] = set()
        with self._tx() as cur:
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
            with cur.copy(_COPY_TEMPLATES) as copy:
                for t in templates:
                    lines += 1
                    body_bytes += len(t.body.encode())
                    models.add(t.model)
                    copy.write_row(
                        (
                            file_id,
                            lines,
                            t.custom_id,
                            t.endpoint,
                            t.method,
                            t.path,
                            t.model,
                            t.body,
                            t.api_key,
                        )
                    )
            size = body_bytes if size_bytes is None else size_bytes
            cur.execute(
                self.q.set_file_stats,
                {"id": file_id, "bytes": size, "line_count": lines, "models": sorted(models)},
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

    # ---------------------------------------------------------------- batches

    def create_batch(self, owner: str, spec: BatchSpec, *, now: datetime) -> BatchView:
        """Create a batch and all its requests in one transaction.

        Idempotent for a given ``spec.batch_id``: a repeated call (a retried request, a
        re-delivered job) returns the existing batch and inserts nothing (lesson 3).

        Raises:
            NotFound: the input file does not exist or is not the owner's.
            ValidationError: the file is not an input file, is empty, or has a line
                whose url differs from the endpoint.
        """
        batch_id = spec.batch_id or next_uuid7()
        with self._tx() as cur:
            cur.execute(self.q.lock_batch, {"id": batch_id})
            existing = cur.execute(self.q.get_batch, {"id": batch_id, "owner": None}).fetchone()
            if existing is not None:
                if existing["owner"] != owner:
                    raise Conflict(f"batch id {batch_id} is taken")
            else:
                self._insert_batch(cur, owner, batch_id, spec, now)
        return self.get_batch(owner, batch_id, now=now)

    def _insert_batch(
        self,
        cur: psycopg.Cursor[dict[str, Any]],
        owner: str,
        batch_id: UUID,
        spec: BatchSpec,
        now: datetime,
    ) -> None:
        file_row = cur.execute(
            self.q.get_file, {"id": spec.input_file_id, "owner": owner}
        ).fetchone()
        if file_row is None:
            raise NotFound("file", spec.input_file_id)
        if file_row["purpose"] != FilePurpose.BATCH.value:
            raise ValidationError(
                f"file {spec.input_file_id} is not a batch input file", param="input_file_id"
            )
        if file_row["line_count"] == 0:
            raise ValidationError("the input file has no requests", param="input_file_id")
        mismatch = cur.execute(
            self.q.first_path_mismatch,
            {"file_id": spec.input_file_id, "endpoint": spec.endpoint},
        ).fetchone()
        if mismatch is not None:
            raise ValidationError(
                f"line {mismatch['line_number']}: url {mismatch['path']!r} does not match "
                f"the batch endpoint {spec.endpoint!r}",
                param="endpoint",
            )
        expires_at = now + spec.window
        output_id, error_id = next_uuid7(), next_uuid7()
        for file_id, purpose in (
            (output_id, FilePurpose.BATCH_OUTPUT),
            (error_id, FilePurpose.BATCH_ERROR),
        ):
            cur.execute(
                self.q.insert_file,
                {
                    "id": file_id,
                    "owner": owner,
                    "filename": f"batch_{batch_id.hex}_{purpose.value.removeprefix('batch_')}"
                    ".jsonl",
                    "purpose": purpose.value,
                    "batch_id": batch_id,
                    "created_at": now,
                    "expires_at": None,
                },
            )
        cur.execute(
            self.q.insert_batch,
            {
                "id": batch_id,
                "owner": owner,
                "input_file_id": spec.input_file_id,
                "output_file_id": output_id,
                "error_file_id": error_id,
                "endpoint": spec.endpoint,
                "completion_window": spec.completion_window,
                "metadata": Jsonb(dict(spec.metadata)) if spec.metadata is not None else None,
                "created_at": now,
                "expires_at": expires_at,
                "total": file_row["line_count"],
                "models": file_row["models"],
            },
        )
        cur.execute(
            self.q.create_batch_requests,
            {
                "batch_id": batch_id,
                "file_id": spec.input_file_id,
                "expires_at": expires_at,
                "now": now,
            },
        )
        cur.execute(self.q.notify, {"channel": WORK_CHANNEL, "payload": str(batch_id)})

    def _read_batch(
        self, cur: psycopg.Cursor[dict[str, Any]], owner: str | None, batch_id: UUID
    ) -> BatchRecord:
        row = cur.execute(self.q.get_batch, {"id": batch_id, "owner": owner}).fetchone()
        if row is None:
            raise NotFound("batch", batch_id)
        return structure(row, BatchRecord)

    def _live_counts(
        self, cur: psycopg.Cursor[dict[str, Any]], records: Sequence[BatchRecord]
    ) -> dict[UUID, RequestCounts]:
        live = [r.id for r in records if r.frozen_counts is None]
        tallies: dict[UUID, dict[str, int]] = {i: {} for i in live}
        if live:
            for row in cur.execute(self.q.count_batch_requests, {"batch_ids": live}):
                tallies[row["batch_id"]][row["state"]] = row["n"]
        out: dict[UUID, RequestCounts] = {}
        for r in records:
            if r.frozen_counts is not None:
                out[r.id] = r.frozen_counts
                continue
            t = tallies[r.id]
            out[r.id] = RequestCounts(
                total=r.total,
                pending=t.get("pending", 0),
                in_progress=t.get("claimed", 0) + t.get("processing", 0),
                completed=t.get("completed", 0),
                failed=t.get("failed", 0),
                canceled=t.get("canceled", 0),
            )
        return out

    def _views(
        self,
        cur: psycopg.Cursor[dict[str, Any]],
        records: Sequence[BatchRecord],
        owner: str | None,
        now: datetime,
    ) -> list[BatchView]:
        """Derive views, freezing (once) any batch that is terminal but not yet frozen."""
        counts = self._live_counts(cur, records)
        views = []
        for record in records:
            view = derive(record, counts[record.id], now)
            if needs_freeze(view):
                frozen = cur.execute(
                    self.q.freeze_batch, {"id": record.id, "version": record.version}
                ).fetchone()
                if frozen is not None:
                    record = self._read_batch(cur, owner, record.id)
                    assert record.frozen_counts is not None
                    view = derive(record, record.frozen_counts, now)
            views.append(view)
        return views

    def get_batch(self, owner: str | None, batch_id: UUID, *, now: datetime) -> BatchView:
        """A batch with its derived status; ``owner=None`` reads any owner's batch."""
        with self._tx() as cur:
            record = self._read_batch(cur, owner, batch_id)
            return self._views(cur, [record], owner, now)[0]

    def list_batches(
        self, owner: str, *, now: datetime, after: UUID | None = None, limit: int = 20
    ) -> Page[BatchView]:
        with self._tx() as cur:
            if (
                after is not None
                and cur.execute(self.q.get_batch, {"id": after, "owner": owner}).fetchone() is None
            ):
                raise ValidationError(f"after: no batch with id {after}", param="after")
            rows = cur.execute(
                self.q.list_batches, {"owner": owner, "after": after, "limit": limit + 1}
            ).fetchall()
            records = [structure(r, BatchRecord) for r in rows[:limit]]
            views = self._views(cur, records, owner, now)
        return Page(tuple(views), has_more=len(rows) > limit)

    def cancel_batch(self, owner: str, batch_id: UUID, *, now: datetime) -> BatchView:
        """Cancel a batch: O(1) on its row, plus a bounded inline sweep of pending rows.

        A batch that is already finished, cancelled or expired is returned unchanged.
        """
        with self._tx() as cur:
            self._read_batch(cur, owner, batch_id)
            hit = cur.execute(
                self.q.cancel_batch, {"id": batch_id, "owner": owner, "now": now}
            ).fetchone()
            if hit is not None:
                cur.execute(
                    self.q.sweep_cancelled,
                    {"now": now, "limit": _INLINE_SWEEP, "batch_id": batch_id},
                )
                cur.execute(self.q.notify, {"channel": CANCEL_CHANNEL, "payload": str(batch_id)})
        return self.get_batch(owner, batch_id, now=now)

    def retry_batch(
        self, owner: str, batch_id: UUID, *, now: datetime, include_cancelled: bool = False
    ) -> BatchView:
        """Run the failed (and optionally canceled) requests of a batch again.

        Raises:
            Conflict: the batch is still cancelling.
        """
        view = self.get_batch(owner, batch_id, now=now)
        if view.status is BatchStatus.CANCELLING:
            raise Conflict("the batch is still cancelling; retry once it is cancelled")
        record = view.record
        with self._tx() as cur:
            row = cur.execute(
                self.q.retry_batch,
                {
                    "id": batch_id,
                    "owner": owner,
                    "version": record.version,
                    "include_cancelled": include_cancelled,
                    "now": now,
                    "window": parse_completion_window(record.completion_window),
                },
            ).fetchone()
            if row is None or row["batches"] == 0:
                current = self._read_batch(cur, owner, batch_id)
                if current.version != record.version:
                    raise Conflict("the batch changed while retrying; try again")
                return view  # nothing to retry: the batch is left as it is
            cur.execute(self.q.notify, {"channel": WORK_CHANNEL, "payload": str(batch_id)})
        return self.get_batch(owner, batch_id, now=now)

    # ---------------------------------------------------------------- results

    def iter_results(
        self, owner: str | None, batch_id: UUID, *, errors: bool, page_size: int = 1000
    ) -> Iterator[ResultLine]:
        """Output (or error) lines of a batch in the order they ended, keyset-paginated."""
        with self._tx() as cur:
            self._read_batch(cur, owner, batch_id)
        query = self.q.stream_errors if errors else self.q.stream_output
        after_time, after_id = _EPOCH, _ZERO_UUID
        while True:
            with self._tx() as cur:
                rows = cur.execute(
                    query,
                    {
                        "batch_id": batch_id,
                        "after_time": after_time,
                        "after_id": after_id,
                        "limit": page_size,
                    },
                ).fetchall()
            for row in rows:
                yield ResultLine(
                    request_id=row["id"],
                    custom_id=row["custom_id"],
                    state=RequestState(row["state"]),
                    status=row["response_status"],
                    body=row["response_body"],
                    failure_reason=row["failure_reason"],
                    failure_message=row["failure_message"],
                    finished_at=row["finished_at"],
                )
            if len(rows) < page_size:
                return
            after_time, after_id = rows[-1]["finished_at"], rows[-1]["id"]

    def list_requests(
        self,
        owner: str,
        batch_id: UUID,
        *,
        states: Sequence[RequestState] | None = None,
        after: UUID | None = None,
        limit: int = 20,
    ) -> Page[RequestSummary]:
        with self._tx() as cur:
            self._read_batch(cur, owner, batch_id)
            after_line = 0
            if after is not None:
                row = cur.execute(self.q.get_request, {"id": after, "owner": owner}).fetchone()
                if row is None or row["batch_id"] != batch_id:
                    raise ValidationError(f"after: no request with id {after}", param="after")
                after_line = row["line_number"]
            rows = cur.execute(
                self.q.list_requests,
                {
                    "batch_id": batch_id,
                    "states": [s.value for s in states] if states else None,
                    "after_line": after_line,
                    "limit": limit + 1,
                },
            ).fetchall()
        items = tuple(_summary(r) for r in rows[:limit])
        return Page(items, has_more=len(rows) > limit)

    def get_request(self, owner: str | None, request_id: UUID) -> RequestDetail:
        with self._tx() as cur:
            row = cur.execute(self.q.get_request, {"id": request_id, "owner": owner}).fetchone()
        if row is None:
            raise NotFound("request", request_id)
        return RequestDetail(
            summary=_summary(row),
            method=row["method"],
            path=row["path"],
            request_body=row["request_body"],
            response_body=row["response_body"],
        )

    # ------------------------------------------------------------ daemon side

    def active_models(self, *, now: datetime) -> list[str]:
        with self._tx() as cur:
            return sorted(r["model"] for r in cur.execute(self.q.active_models, {"now": now}))

    def claim(
        self, daemon_id: UUID, slots: Mapping[str, int], *, now: datetime
    ) -> list[ClaimedRequest]:
        """Claim and start up to ``slots[model]`` due requests per model, in one statement."""
        wanted = {m: n for m, n in slots.items() if n > 0}
        if not wanted:
            return []
        with self._tx() as cur:
            rows = cur.execute(
                self.q.claim,
                {
                    "daemon_id": daemon_id,
                    "now": now,
                    "models": list(wanted),
                    "slots": list(wanted.values()),
                },
            ).fetchall()
        return [
            ClaimedRequest(
                id=r["id"],
                batch_id=r["batch_id"],
                attempt=r["attempts"],
                budget_used=r["attempts"] - r["budget_base"],
                model=r["model"],
                batch_expires_at=r["batch_expires_at"],
                custom_id=r["custom_id"],
                endpoint=r["endpoint"],
                method=r["method"],
                path=r["path"],
                body=r["body"],
                api_key=r["api_key"],
            )
            for r in rows
        ]

    def record_results(self, daemon_id: UUID, results: Sequence[AttemptResult]) -> RecordStats:
        """Write many attempt results in one statement; fenced rows count as lost."""
        if not results:
            return RecordStats(written=0)
        params: dict[str, Any] = {
            "daemon_id": daemon_id,
            "ids": [r.request_id for r in results],
            "attempts": [r.attempt for r in results],
            "states": [r.kind.value for r in results],
            "finished_at": [r.finished_at for r in results],
            "not_before": [r.not_before if r.kind is ResultKind.RETRY else None for r in results],
            "statuses": [r.status for r in results],
            "bodies": [r.body for r in results],
            "reasons": [r.failure.reason.value if r.failure else None for r in results],
            "messages": [r.failure.message if r.failure else None for r in results],
            "input_tokens": [r.input_tokens for r in results],
            "output_tokens": [r.output_tokens for r in results],
        }
        with self._tx() as cur:
            written = {row["id"] for row in cur.execute(self.q.record_results, params)}
        lost = tuple(r.request_id for r in results if r.request_id not in written)
        return RecordStats(written=len(written), lost=lost)

    def release(
        self, daemon_id: UUID, *, now: datetime, request_ids: Sequence[UUID] | None = None
    ) -> int:
        with self._tx() as cur:
            rows = cur.execute(
                self.q.release,
                {
                    "daemon_id": daemon_id,
                    "now": now,
                    "ids": list(request_ids) if request_ids is not None else None,
                },
            ).fetchall()
            if rows:
                cur.execute(self.q.notify, {"channel": WORK_CHANNEL, "payload": "released"})
        return len(rows)

    def reclaim_dead(
        self, *, now: datetime, stale_before: datetime, max_attempts: int, limit: int = 1000
    ) -> ReclaimStats:
        with self._tx() as cur:
            rows = cur.execute(
                self.q.reclaim_dead_daemons,
                {
                    "now": now,
                    "stale_before": stale_before,
                    "limit": limit,
                    "max_attempts": max_attempts,
                },
            ).fetchall()
        return _reclaim_stats(rows)

    def reclaim_timed_out(
        self, *, now: datetime, claimed_before: datetime, max_attempts: int, limit: int = 1000
    ) -> ReclaimStats:
        with self._tx() as cur:
            rows = cur.execute(
                self.q.reclaim_timed_out,
                {
                    "now": now,
                    "claimed_before": claimed_before,
                    "limit": limit,
                    "max_attempts": max_attempts,
                },
            ).fetchall()
        return _reclaim_stats(rows)

    def batches_to_abort(self, batch_ids: Sequence[UUID], *, now: datetime) -> dict[UUID, str]:
        if not batch_ids:
            return {}
        with self._tx() as cur:
            rows = cur.execute(
                self.q.batches_to_abort, {"batch_ids": list(batch_ids), "now": now}
            ).fetchall()
        return {r["id"]: r["reason"] for r in rows}

    def sweep(self, *, now: datetime, limit: int = 5000) -> int:
        """One round of maintenance: stamp expired batches, then turn a bounded chunk of
        pending rows of cancelled and expired batches canceled. Returns rows changed."""
        with self._tx() as cur:
            cur.execute(self.q.expire_batches, {"now": now})
            swept = len(
                cur.execute(
                    self.q.sweep_cancelled, {"now": now, "limit": limit, "batch_id": None}
                ).fetchall()
            )
            swept += len(
                cur.execute(self.q.expire_requests, {"now": now, "limit": limit}).fetchall()
            )
        return swept

    def register_daemon(self, info: DaemonInfo, *, now: datetime) -> None:
        with self._tx() as cur:
            cur.execute(
                self.q.daemon_register,
                {
                    "id": info.id,
                    "hostname": info.hostname,
                    "pid": info.pid,
                    "version": info.version,
                    "now": now,
                    "config": Jsonb(json.loads(json.dumps(dict(info.config), default=str))),
                },
            )

    def heartbeat(self, daemon_id: UUID, *, now: datetime) -> bool:
        """Refresh the heartbeat; False when the daemon was declared dead meanwhile."""
        with self._tx() as cur:
            return (
                cur.execute(self.q.daemon_heartbeat, {"id": daemon_id, "now": now}).fetchone()
                is not None
            )

    def stop_daemon(self, daemon_id: UUID, *, now: datetime) -> None:
        with self._tx() as cur:
            cur.execute(self.q.daemon_stop, {"id": daemon_id, "now": now})


class PostgresListener:
    """LISTEN on one connection outside the pool; ``wait`` blocks up to ``timeout``."""

    def __init__(self, conninfo: str, listen_sql: str) -> None:
        kwargs = connection_kwargs(0)
        kwargs.pop("row_factory")
        self._conn = psycopg.connect(conninfo, autocommit=True, **kwargs)
        self._conn.execute(listen_sql)

    def wait(self, timeout: float) -> list[str]:
        """Channels notified within ``timeout`` seconds (empty when none)."""
        with translate_errors():
            return [n.channel for n in self._conn.notifies(timeout=timeout, stop_after=1)]

    def close(self) -> None:
        self._conn.close()


def _summary(row: Mapping[str, Any]) -> RequestSummary:
    return RequestSummary(
        id=row["id"],
        batch_id=row["batch_id"],
        custom_id=row["custom_id"],
        model=row["model"],
        state=RequestState(row["state"]),
        attempts=row["attempts"],
        line_number=row["line_number"],
        response_status=row["response_status"],
        failure_reason=row["failure_reason"],
        failure_message=row["failure_message"],
        claimed_at=row["claimed_at"],
        finished_at=row["finished_at"],
    )


def _reclaim_stats(rows: Sequence[Mapping[str, Any]]) -> ReclaimStats:
    failed = sum(1 for r in rows if r["state"] == "failed")
    return ReclaimStats(requeued=len(rows) - failed, failed=failed)
