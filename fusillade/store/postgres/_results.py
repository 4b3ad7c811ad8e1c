"""Results and per-request views, streamed with keyset pagination."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from fusillade.core.models import (
    RequestState,
)
from fusillade.errors import NotFound, ValidationError
from fusillade.store.interface import (
    Page,
    RequestDetail,
    RequestSummary,
    ResultLine,
)
from fusillade.store.postgres._base import PostgresBase

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ZERO_UUID = UUID(int=0)


class ResultQueries(PostgresBase):
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
