"""The pure rules of a follower's cursor (fusillade/core/live.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID

import pytest

from fusillade.core.live import Found, ResultCursor, advance
from fusillade.core.models import RequestState
from fusillade.core.results import ResultLine

ZERO = UUID(int=0)


def _line(n: int) -> ResultLine:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    return ResultLine(UUID(int=n), f"c{n}", RequestState.COMPLETED, 200, "{}", None, None, at)


def test_a_cursor_reads_back_from_its_text() -> None:
    for cursor in (
        ResultCursor(0, ZERO),
        ResultCursor(2**64 - 1, UUID(int=7), ((3, ZERO), (5, UUID(int=9)))),
    ):
        assert ResultCursor.parse(str(cursor)) == cursor


@pytest.mark.parametrize(
    "text",
    ["", "1", "1." + "0" * 31, "x." + "0" * 32, f"{2**64}." + "0" * 32,
     "1." + "0" * 32 + "~5~3", "1." + "0" * 32 + "~3~3", "1." + "0" * 32 + "~" * 100_000],
)  # fmt: skip
def test_a_malformed_cursor_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a results cursor"):
        ResultCursor.parse(text)


def test_a_read_moves_the_cursor_and_keeps_waiting_on_what_still_runs() -> None:
    after = ResultCursor(6, UUID(int=1), ((4, ZERO), (5, ZERO)))
    found = [
        Found(_line(10), 5, late=True),  # transaction 5 committed since: its two lines
        Found(_line(11), 5, late=True),
        Found(_line(20), 9, late=False),  # then the page after position 6
        Found(_line(21), 13, late=False),
    ]
    read = advance(after, found, in_progress={4, 8, 12, 15})
    cursors = [x.cursor for x in read.lines]
    # stopping after line 10 must re-read line 11 (transaction 5 is still waited on)
    assert cursors[0] == ResultCursor(6, UUID(int=1), ((4, ZERO), (5, UUID(int=10))))
    assert cursors[1] == ResultCursor(6, UUID(int=1), ((4, ZERO), (5, UUID(int=11))))
    # past position 9: 5 has ended (all its lines were read), 8 runs below 9, 12 does not
    assert cursors[2] == ResultCursor(9, UUID(int=20), ((4, ZERO), (8, ZERO)))
    assert cursors[3] == ResultCursor(13, UUID(int=21), ((4, ZERO), (8, ZERO), (12, ZERO)))
    assert read.cursor == cursors[3]


def test_a_read_without_lines_drops_what_ended() -> None:
    after = ResultCursor(6, UUID(int=1), ((4, ZERO), (5, ZERO)))
    read = advance(after, [], in_progress={5, 9})
    assert read.lines == ()
    assert read.cursor == ResultCursor(6, UUID(int=1), ((5, ZERO),))
