"""Results and per-request views, streamed with keyset pagination."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, Final
from uuid import UUID

from psycopg.rows import tuple_row

from fusillade.core.ids import format_id
from fusillade.core.models import FailureReason, RequestState
from fusillade.core.results import ResultLine
from fusillade.errors import NotFound, ValidationError
from fusillade.store.interface import Page, RequestDetail, RequestSummary
from fusillade.store.postgres._base import PostgresBase

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_STATES: Final = {s.value: s for s in RequestState}
_REASONS: Final = {r.value: r for r in FailureReason}
_ZERO_UUID = UUID(int=0)


class ResultQueries(PostgresBase):
    def iter_results(
        self, owner: str | None, batch_id: UUID, *, errors: bool, page_size: int = 5000
    ) -> Iterator[ResultLine]:
        """Output (or error) lines of a batch in the order they ended, keyset-paginated.

        The next page is fetched in a helper thread while this one is consumed, so the
        database's time per page overlaps the caller's formatting. Each page is its own
        short transaction: no connection is held between pages.
        """
        with self._tx() as cur:
            self._read_batch(cur, owner, batch_id)
        query = self.q.stream_errors if errors else self.q.stream_output

        def fetch(after: tuple[datetime, UUID]) -> list[tuple[Any, ...]]:
            params = {
                "batch_id": batch_id,
                "after_time": after[0],
                "after_id": after[1],
                "limit": page_size,
            }
            with self._tx() as cur:
                pages = cur.connection.cursor(row_factory=tuple_row)
                return pages.execute(query, params).fetchall()

        with ThreadPoolExecutor(1, thread_name_prefix="fusillade-results") as ahead:
            rows = fetch((_EPOCH, _ZERO_UUID))
            while True:
                # Columns: id, custom_id, state, status, body, body_json, body_raw, reason,
                # message, finished_at (stream_output.sql).
                following = (
                    ahead.submit(fetch, (rows[-1][9], rows[-1][0]))
                    if len(rows) == page_size
                    else None
                )
                for rid, cid, state, status, body, body_json, raw, reason, message, at in rows:
                    yield ResultLine(
                        request_id=rid,
                        custom_id=cid,
                        state=_STATES[state],
                        status=status,
                        body=body,
                        failure_reason=_reason(reason),
                        failure_message=message,
                        finished_at=at,
                        body_is_json=body_json,
                        body_raw=raw,
                    )
                if following is None:
                    return
                rows = following.result()

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
                    raise ValidationError(
                        f"after: no request with id {format_id('request', after)}", param="after"
                    )
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
            response_body_raw=row["response_body_raw"],
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
        failure_reason=_reason(row["failure_reason"]),
        failure_message=row["failure_message"],
        claimed_at=row["claimed_at"],
        finished_at=row["finished_at"],
    )


def _reason(value: str | None) -> FailureReason | None:
    return None if value is None else _REASONS[value]
