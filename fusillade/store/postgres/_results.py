"""Results and per-request views, streamed with keyset pagination."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, Final
from uuid import UUID

from psycopg.rows import tuple_row

from fusillade.core.ids import format_id
from fusillade.core.live import START, Found, LiveLines, ResultCursor, advance
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

        def fetch(after: tuple[Any, ...] | None) -> list[tuple[Any, ...]]:
            # Columns: id, custom_id, ..., finished_at (stream_output.sql); keyset on the
            # last row's (finished_at, id).
            at, rid = (_EPOCH, _ZERO_UUID) if after is None else (after[9], after[0])
            params = {"batch_id": batch_id, "after_time": at, "after_id": rid}
            return self._page(query, {**params, "limit": page_size})

        yield from _lines(fetch, page_size)

    def iter_results_by_line(
        self, owner: str | None, batch_id: UUID, *, page_size: int = 5000
    ) -> Iterator[ResultLine]:
        """The result lines of a batch's finished requests, output and error lines
        together, in input (line) order: keyset-paginated on the line number
        (``stream_by_line.sql``), a page fetched ahead as above."""
        with self._tx() as cur:
            self._read_batch(cur, owner, batch_id)

        def fetch(after: tuple[Any, ...] | None) -> list[tuple[Any, ...]]:
            line = 0 if after is None else after[10]  # the line_number column
            params = {"batch_id": batch_id, "after_line": line, "limit": page_size}
            return self._page(self.q.stream_by_line, params)

        yield from _lines(fetch, page_size)

    def live_output(
        self,
        owner: str | None,
        batch_id: UUID,
        *,
        after: ResultCursor | None,
        limit: int = 1000,
    ) -> LiveLines:
        """Output lines after ``after`` (live_output.sql) and the transactions in progress
        (live_in_progress.sql), read in one snapshot; the next cursor by ``advance``."""
        start = after or START
        with self._tx() as cur:
            cur.execute(self.q.read_one_snapshot)
            self._read_batch(cur, owner, batch_id)
            row = cur.execute(self.q.live_in_progress).fetchone()
            in_progress = {int(x) for x in row["xids"]} if row else set()
            params = {
                "batch_id": batch_id,
                "after_xid": str(start.position),
                "after_id": start.request_id,
                "waiting_xids": [str(x) for x, _ in start.waiting],
                "waiting_after": [a for _, a in start.waiting],
                "limit": limit,
            }
            rows = (
                cur.connection.cursor(row_factory=tuple_row)
                .execute(self.q.live_output, params)
                .fetchall()
            )
        # the last two columns: result_xid (the position) and late
        found = [Found(_line(r), int(r[-2]), r[-1]) for r in rows]
        return advance(after, found, in_progress)

    def _page(self, query: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        with self._tx() as cur:
            pages = cur.connection.cursor(row_factory=tuple_row)
            return pages.execute(query, params).fetchall()

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


def _lines(
    fetch: Callable[[tuple[Any, ...] | None], list[tuple[Any, ...]]], page_size: int
) -> Iterator[ResultLine]:
    """The result lines of the pages ``fetch(last row of the previous page)`` returns
    (``None``: the first page), the next page fetched in a helper thread while this one
    is consumed; rows of unfinished requests are skipped (stream_by_line.sql reads every
    state). Columns: id, custom_id, state, status, body, body_json, body_raw, reason,
    message, finished_at, then any keyset columns (stream_output.sql)."""
    with ThreadPoolExecutor(1, thread_name_prefix="fusillade-results") as ahead:
        rows = fetch(None)
        while True:
            following = ahead.submit(fetch, rows[-1]) if len(rows) == page_size else None
            for row in rows:
                if _STATES[row[2]].is_terminal:
                    yield _line(row)
            if following is None:
                return
            rows = following.result()


def _line(row: tuple[Any, ...]) -> ResultLine:
    """A result row (the columns of stream_output.sql) as its ``ResultLine``."""
    rid, cid, state, status, body, body_json, raw, reason, message, at, *_ = row
    return ResultLine(
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
