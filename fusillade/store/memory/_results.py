"""Results and per-request views in memory, a page at a time."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from uuid import UUID

from fusillade.core.ids import format_id
from fusillade.core.live import START, Found, LiveLines, ResultCursor, advance
from fusillade.core.models import (
    RequestState,
)
from fusillade.core.results import ResultLine
from fusillade.errors import ValidationError
from fusillade.store.interface import Page, RequestDetail, RequestSummary
from fusillade.store.memory._base import MemoryBase
from fusillade.store.memory._rows import CA, _Row


class ResultParts(MemoryBase):
    def iter_results(
        self, owner: str | None, batch_id: UUID, *, errors: bool, page_size: int = 5000
    ) -> Iterator[ResultLine]:
        """Output (or error) lines of a batch in the order they ended, a page at a time."""
        with self._lock:
            self._batch(owner, batch_id)
        states = (RequestState.FAILED, CA) if errors else (RequestState.COMPLETED,)
        cursor: tuple[datetime, UUID] | None = None
        while True:
            with self._lock:
                page: list[tuple[datetime, UUID, ResultLine]] = []
                for row in self._rows_of(batch_id):
                    r = row.req
                    if r.state not in states or r.finished_at is None:
                        continue
                    key = (r.finished_at, r.id)
                    if cursor is not None and key <= cursor:
                        continue
                    page.append((*key, self._result_line(row)))
                page.sort(key=lambda x: (x[0], x[1]))
                page = page[:page_size]
            yield from (line for _, _, line in page)
            if len(page) < page_size:
                return
            cursor = (page[-1][0], page[-1][1])

    def live_output(
        self,
        owner: str | None,
        batch_id: UUID,
        *,
        after: ResultCursor | None,
        limit: int = 1000,
    ) -> LiveLines:
        """Output lines after ``after`` in the order they were recorded; a write here is
        never half visible (one lock), so no transaction is ever waited on."""
        start = after or START
        with self._lock:
            self._batch(owner, batch_id)
            found: list[tuple[int, UUID, _Row]] = []
            for row in self._rows_of(batch_id):
                if row.req.state is RequestState.COMPLETED:
                    key = (1 if row.result_seq is None else row.result_seq, row.req.id)
                    if key > (start.position, start.request_id):
                        found.append((*key, row))
            found.sort(key=lambda x: (x[0], x[1]))
            lines = [Found(self._result_line(row), seq, False) for seq, _, row in found[:limit]]
        return advance(after, lines, ())

    def iter_results_by_line(
        self, owner: str | None, batch_id: UUID, *, page_size: int = 5000
    ) -> Iterator[ResultLine]:
        """The result lines of a batch's finished requests in input (line) order, a page
        at a time."""
        with self._lock:
            self._batch(owner, batch_id)
        states = (RequestState.COMPLETED, RequestState.FAILED, CA)
        after_line = 0
        while True:
            with self._lock:
                page: list[tuple[int, ResultLine]] = []
                for row in self._rows_of(batch_id):  # in line order
                    r = row.req
                    if row.line_number <= after_line or r.state not in states:
                        continue
                    page.append((row.line_number, self._result_line(row)))
                    if len(page) == page_size:
                        break
            yield from (line for _, line in page)
            if len(page) < page_size:
                return
            after_line = page[-1][0]

    def list_requests(
        self,
        owner: str,
        batch_id: UUID,
        *,
        states: Sequence[RequestState] | None = None,
        after: UUID | None = None,
        limit: int = 20,
    ) -> Page[RequestSummary]:
        with self._lock:
            self._batch(owner, batch_id)
            after_line = 0
            if after is not None:
                row = self._rows.get(after)
                if (
                    row is None
                    or row.req.batch_id != batch_id
                    or self._batches[row.req.batch_id].owner != owner
                ):
                    raise ValidationError(
                        f"after: no request with id {format_id('request', after)}", param="after"
                    )
                after_line = row.line_number
            wanted = set(states) if states else None
            found = []
            for row in self._rows_of(batch_id):
                if row.line_number <= after_line:
                    continue
                if wanted is not None and row.req.state not in wanted:
                    continue
                found.append(row)
                if len(found) > limit:
                    break
            items = tuple(self._summary(r) for r in found[:limit])
        return Page(items, has_more=len(found) > limit)

    def get_request(self, owner: str | None, request_id: UUID) -> RequestDetail:
        with self._lock:
            row, t = self._request_of(owner, request_id)
            return RequestDetail(
                summary=self._summary(row),
                method=t.method,
                path=t.path,
                request_body=t.body,
                response_body=row.req.response_body,
                response_body_raw=row.body_raw,
            )

    def _result_line(self, row: _Row) -> ResultLine:
        """The result line of a finished request (``self._lock`` held)."""
        r = row.req
        assert r.finished_at is not None
        t = self._templates[row.file_id][row.line_number - 1]
        return ResultLine(
            request_id=r.id,
            custom_id=t.custom_id,
            state=r.state,
            status=r.response_status,
            body=r.response_body,
            failure_reason=r.failure.reason if r.failure else None,
            failure_message=r.failure.message if r.failure else None,
            finished_at=r.finished_at,
            body_is_json=row.body_is_json,
            body_raw=row.body_raw,
        )
