"""Upstream trouble summarized (fusillade/core/upstream_trouble.py), in virtual time."""

from __future__ import annotations

import pytest

from fusillade.core.retry import HttpResponse, TransportError, TransportErrorKind
from fusillade.core.upstream_trouble import TroubleLog, TroubleReport, problem_of


@pytest.mark.parametrize(
    ("outcome", "problem"),
    [
        (HttpResponse(200), None),
        (HttpResponse(400), None),
        (HttpResponse(404), None),
        (HttpResponse(429), "rate_limited"),
        (HttpResponse(500), "server_error"),
        (HttpResponse(503), "server_error"),
        (TransportError(TransportErrorKind.READ_TIMEOUT), "timeout"),
        (TransportError(TransportErrorKind.POOL_TIMEOUT), "timeout"),
        (TransportError(TransportErrorKind.CONNECT), "connect"),
        (TransportError(TransportErrorKind.PROTOCOL), "connect"),
        (TransportError(TransportErrorKind.BUILDER), None),
        (TransportError(TransportErrorKind.LOST), None),
    ],
)
def test_problem_of(outcome: HttpResponse | TransportError, problem: str | None) -> None:
    assert problem_of(outcome) == problem


def drive(log: TroubleLog, events: dict[float, list[tuple[str, str | None]]], until: float):
    """Note ``events`` (time -> [(upstream, problem)]) and report every second."""
    reports: list[tuple[float, TroubleReport]] = []
    t = 0.0
    while t <= until:
        for upstream, problem in events.get(t, []):
            log.note(upstream, problem, t, model="gpt-4o")  # type: ignore[arg-type]
        reports += [(t, r) for r in log.report(t)]
        t += 0.5
    return reports


def test_an_episode_is_started_ongoing_and_cleared() -> None:
    log = TroubleLog(interval=30)
    events: dict[float, list[tuple[str, str | None]]] = {}
    # 429s every half second from t=10 to t=70, a timeout at t=40, successes meanwhile
    for i in range(121):
        t = 10 + i / 2
        events[t] = [("openai", "rate_limited"), ("openai", None)]
    events[40.0].append(("openai", "timeout"))
    reports = drive(log, events, until=200)
    phases = [(t, r.phase) for t, r in reports]
    assert phases == [(10.0, "started"), (40.0, "ongoing"), (70.0, "ongoing"), (100.0, "cleared")]
    started = reports[0][1]
    assert started.counts == {"rate_limited": 1} and started.seconds == 0
    ongoing = reports[1][1]
    assert ongoing.counts == {"rate_limited": 60, "timeout": 1}
    assert ongoing.succeeded == 60 and ongoing.seconds == 30
    assert ongoing.models == (("gpt-4o", 61),)
    assert reports[2][1].counts == {"rate_limited": 60}
    assert reports[3][1].counts == {} and reports[3][1].seconds == 30
    assert log.troubled() == frozenset()


def test_a_burst_costs_a_bounded_number_of_lines() -> None:
    log = TroubleLog(interval=30)
    lines = 0
    for ms in range(0, 120_000, 10):  # a 429 every 10 ms for two minutes: 12,000 of them
        t = ms / 1000
        log.note("openai", "rate_limited", t)
        if ms % 1000 == 0:
            lines += len(log.report(t))
    lines += len(log.report(200.0))
    assert lines == 1 + 3 + 1  # started at 0 s, one at 30, 60 and 90 s, cleared


def test_upstreams_are_reported_apart_and_a_quiet_one_never() -> None:
    log = TroubleLog(interval=10)
    log.note("a", "connect", 0.0)
    log.note("b", None, 0.0)
    log.note("c", "server_error", 1.0)
    assert [(r.upstream, r.phase) for r in log.report(1.0)] == [
        ("a", "started"),
        ("c", "started"),
    ]
    assert log.report(5.0) == []  # nothing new, not yet quiet for an interval
    assert [(r.upstream, r.phase) for r in log.report(11.0)] == [
        ("a", "cleared"),
        ("c", "cleared"),
    ]
    log.note("a", "connect", 12.0)  # a new episode
    log.note("a", "connect", 13.0)
    assert [(r.upstream, r.phase) for r in log.report(13.0)] == [("a", "started")]
    log.note("a", "connect", 22.0)
    assert log.report(22.0) == []  # one summary per interval
    (ongoing,) = log.report(23.0)
    assert (ongoing.phase, ongoing.counts, ongoing.seconds) == ("ongoing", {"connect": 1}, 10)


def test_the_lines_read() -> None:
    report = TroubleReport(
        "openai",
        "ongoing",
        {"rate_limited": 57, "timeout": 3},
        120,
        30.0,
        (("gpt-4o", 50), ("other", 10)),
    )
    assert report.describe("openai (api.openai.com)", throttled=("rpm",)) == (
        "upstream openai (api.openai.com): 57 rate-limited (429), 3 timeouts in the last 30s; "
        "120 succeeded; throttled: rpm; models: gpt-4o 50, other 10"
    )
    started = TroubleReport("o", "started", {"connect": 1}, 0, 0.25, ())
    assert (
        started.describe("o") == "upstream o: trouble started: 1 connection error in the last 0.2s"
    )
    cleared = TroubleReport("o", "cleared", {}, 4, 30.0, ())
    assert cleared.describe("o") == "upstream o: trouble cleared, no problem in 30s; 4 succeeded"


def test_in_trouble_until_cleared() -> None:
    log = TroubleLog(interval=10)
    assert not log.in_trouble("a")
    log.note("a", "timeout", 0.0)
    assert log.in_trouble("a") and log.troubled() == {"a"}
    log.report(0.0)
    log.report(10.0)  # cleared
    assert not log.in_trouble("a")
