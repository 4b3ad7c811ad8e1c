"""The progress line's account of trouble and the final error summary: pure formatting."""

from __future__ import annotations

import io

from fusillade.core.models import BatchStatus, FailureReason, RequestCounts
from fusillade.core.trouble import BatchTrouble, ErrorKind, ErrorKinds, ErrorSample
from fusillade.progress import (
    ERROR_WIDTH,
    Progress,
    Snapshot,
    describe,
    error_summary,
    shorten,
    trouble_text,
)

HTTP = FailureReason.HTTP_STATUS
OPENAI_401 = (
    '{"error": {"message": "Incorrect API key provided: sk-proj-abcdef123456. You can '
    'find your API key at https://platform.openai.com/account/api-keys.", '
    '"type": "invalid_request_error", "code": "invalid_api_key"}}'
)


def test_shorten_makes_one_line_cut_to_width_with_secrets_masked() -> None:
    assert shorten("a\n  b\tc ", 60) == "a b c"
    assert shorten("x" * 100, 20) == "x" * 17 + "..."
    assert len(shorten("word " * 40, ERROR_WIDTH)) <= ERROR_WIDTH
    assert shorten("via https://user:hunter2@proxy/v1 with Bearer tok3n", 100) == (
        "via https://***@proxy/v1 with Bearer ***"
    )


def test_describe_shows_the_kind_and_what_the_upstream_said() -> None:
    e401 = ErrorSample(HTTP, 401, "upstream answered HTTP 401 Unauthorized", OPENAI_401)
    text = describe(e401)
    assert text.startswith("http 401: Incorrect API key provided: sk-proj-***. You")
    assert "abcdef" not in text
    assert len(text) <= ERROR_WIDTH
    # a body cut short by the store's prefix still gives its message
    assert describe(ErrorSample(HTTP, 429, "m", OPENAI_401[:60]), 200) == (
        "http 429: Incorrect API key provided: sk-***"
    )
    # a plain-text body is the message; an unreadable one leaves ours
    assert describe(ErrorSample(HTTP, 502, "ours", "Bad\ngateway")) == "http 502: Bad gateway"
    assert describe(ErrorSample(HTTP, 500, "upstream answered HTTP 500", "{}")) == (
        "http 500: upstream answered HTTP 500"
    )
    assert describe(ErrorSample(HTTP, 500, "ours", '{"error": "boom"}')) == "http 500: boom"
    timeout = ErrorSample(FailureReason.TIMEOUT, None, "read timed out")
    assert describe(timeout) == "timeout: read timed out"
    assert describe(ErrorSample(FailureReason.LOST)) == "lost"


def test_trouble_text_lists_what_holds_the_batch_back() -> None:
    assert trouble_text(None) == ""
    assert trouble_text(BatchTrouble()) == ""
    retry = ErrorSample(HTTP, 429, "upstream answered HTTP 429 Too Many Requests")
    failure = ErrorSample(FailureReason.CONNECT, None, "could not connect")
    trouble = BatchTrouble(12, 7, False, retry, failure)
    assert trouble_text(trouble, paused=["gpt-4o 9s"], throttled=["rpm"]) == (
        " | retries waiting 12 (7 after 429) | 429 pause: gpt-4o 9s | throttled: rpm"
        " | last error: http 429: upstream answered HTTP 429 Too Many Requests"
    )
    # no retry waits any more: the last failure is the latest error
    assert trouble_text(BatchTrouble(0, 0, False, retry, failure)) == (
        " | last error: connect: could not connect"
    )
    assert trouble_text(BatchTrouble(10_000, 0, True)) == " | retries waiting 10,000+"


def test_the_line_ends_with_the_trouble() -> None:
    progress = Progress(io.StringIO(), tty=False)
    counts = RequestCounts(total=10, pending=4, completed=5, failed=1)
    snapshot = Snapshot(BatchStatus.IN_PROGRESS, counts)
    trouble = BatchTrouble(3, 0, False, ErrorSample(HTTP, 500, "x", "boom"))
    line = progress.line(snapshot, trouble=trouble)
    assert line.startswith("in_progress 6/10 ( 60.0%) ok 5 failed 1 canceled 0 claimed 0 | ")
    assert line.endswith(" | retries waiting 3 | last error: http 500: boom")


def test_details_are_due_when_a_line_prints() -> None:
    progress = Progress(io.StringIO(), interval=3600, tty=False)
    snapshot = Snapshot(BatchStatus.IN_PROGRESS, RequestCounts(total=1, pending=1))
    assert progress.details_due()
    progress.update(snapshot)
    assert not progress.details_due()  # the next line is an hour away
    assert progress.details_due(final=True)


def test_error_summary_lists_kinds_with_counts_and_an_example() -> None:
    assert error_summary(ErrorKinds()) == []
    kinds = ErrorKinds(
        (
            ErrorKind(ErrorSample(HTTP, 401, "upstream answered HTTP 401", OPENAI_401), 1200),
            ErrorKind(ErrorSample(FailureReason.TIMEOUT, None, "read timed out"), 3),
        ),
        scanned=1203,
    )
    lines = error_summary(kinds, width=80)
    assert lines[0] == "errors by kind (of 1,203 failed, canceled or expired requests):"
    assert lines[1].startswith("  http 401  1,200  e.g. Incorrect API key provided: sk-proj-***.")
    assert lines[2] == "  timeout       3  e.g. read timed out"
    assert all(len(line) <= 80 for line in lines[1:])
    capped = error_summary(ErrorKinds(kinds.kinds, scanned=1000, capped=True))
    assert capped[0] == "errors by kind (of the latest 1,000 failed, canceled or expired requests):"


def test_in_flight_is_the_daemons_count_when_it_runs_here() -> None:
    """The database's in_progress count holds answers still being recorded, so it can
    exceed the concurrency (the review saw "in flight 3160" with --concurrency 2000):
    `run` shows its daemon's count of requests sent and not answered instead."""
    progress = Progress(io.StringIO(), tty=False)
    counts = RequestCounts(total=10, pending=1, in_progress=7, completed=2)
    snapshot = Snapshot(BatchStatus.IN_PROGRESS, counts)
    line = progress.line(snapshot, in_flight=3)
    assert " canceled 0 in flight 3 | " in line, line
    assert "claimed" not in line and " 7 " not in line, line
    # without a daemon here (watch): what the daemons claimed, named as such
    line = progress.line(snapshot)
    assert " canceled 0 claimed 7 | " in line and "in flight" not in line, line
