"""Failure classification, retry-after parsing and the retry decision."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import attrs
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from fusillade.core.models import FailureReason
from fusillade.core.retry import (
    DEFAULT_POLICY,
    DelaySource,
    GiveUp,
    GiveUpReason,
    HttpResponse,
    Permanent,
    Retriable,
    RetryAt,
    RetryPolicy,
    Success,
    TransportError,
    TransportErrorKind,
    backoff,
    classify,
    decide,
    parse_retry_after,
)

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
FAR = NOW + timedelta(days=1)

nows = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)
jitters = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)
seconds = st.floats(min_value=0.001, max_value=3_600.0)
policies = st.builds(
    RetryPolicy,
    max_attempts=st.integers(min_value=1, max_value=50),
    base=seconds.map(lambda s: timedelta(seconds=s)),
    factor=st.floats(min_value=1.0, max_value=10.0),
    cap=seconds.map(lambda s: timedelta(seconds=s)),
    retry_after_ceiling=st.integers(min_value=0, max_value=3_600).map(
        lambda s: timedelta(seconds=s)
    ),
    deadline_margin=st.integers(min_value=0, max_value=600).map(lambda s: timedelta(seconds=s)),
)


def expected_verdict(status: int) -> type[Success | Retriable | Permanent]:
    """The spec's rule, written independently of the implementation."""
    if 200 <= status <= 299:
        return Success
    if status in (408, 409, 429, 499) or 500 <= status <= 599:
        return Retriable
    return Permanent


# ---------------------------------------------------------------------- classification


def test_classification_table_for_every_status() -> None:
    for status in range(100, 1000):  # upstreams may send any three digits
        result = classify(HttpResponse(status, {}, f"body {status}"))
        assert type(result) is expected_verdict(status), status
        if isinstance(result, Success):
            assert result.response.status == status
        else:
            assert result.failure.reason is FailureReason.HTTP_STATUS
            assert result.failure.status == status
            assert result.failure.body == f"body {status}"
            assert str(status) in result.failure.message
            assert result.outcome == HttpResponse(status, {}, f"body {status}")


def test_failure_messages_name_the_status_and_its_phrase() -> None:
    messages = {
        status: result.failure.message
        for status in (404, 503, 599, 600)
        if isinstance(result := classify(HttpResponse(status)), Retriable | Permanent)
    }
    assert messages == {
        404: "upstream answered HTTP 404 Not Found",
        503: "upstream answered HTTP 503 Service Unavailable",
        599: "upstream answered HTTP 599",
        600: "upstream answered HTTP 600",
    }


@pytest.mark.parametrize(
    ("kind", "verdict", "reason"),
    [
        (TransportErrorKind.CONNECT_TIMEOUT, Retriable, FailureReason.TIMEOUT),
        (TransportErrorKind.READ_TIMEOUT, Retriable, FailureReason.TIMEOUT),
        (TransportErrorKind.WRITE_TIMEOUT, Retriable, FailureReason.TIMEOUT),
        (TransportErrorKind.POOL_TIMEOUT, Retriable, FailureReason.TIMEOUT),
        (TransportErrorKind.CONNECT, Retriable, FailureReason.CONNECT),
        (TransportErrorKind.READ, Retriable, FailureReason.CONNECT),
        (TransportErrorKind.WRITE, Retriable, FailureReason.CONNECT),
        (TransportErrorKind.PROTOCOL, Retriable, FailureReason.CONNECT),
        (TransportErrorKind.BUILDER, Permanent, FailureReason.BUILDER),
        (TransportErrorKind.LOST, Retriable, FailureReason.LOST),
    ],
)
def test_transport_classification(
    kind: TransportErrorKind, verdict: type[Retriable | Permanent], reason: FailureReason
) -> None:
    result = classify(TransportError(kind))
    assert type(result) is verdict
    assert isinstance(result, Retriable | Permanent)
    assert result.failure.reason is reason
    assert result.failure.status is None
    assert result.failure.body is None
    assert result.failure.message  # a default message when none is given
    assert result.outcome == TransportError(kind)
    detailed = classify(TransportError(kind, "dns lookup failed"))
    assert isinstance(detailed, Retriable | Permanent)
    assert detailed.failure.message == "dns lookup failed"


def test_every_transport_kind_is_classified() -> None:
    for kind in TransportErrorKind:
        assert isinstance(classify(TransportError(kind)), Retriable | Permanent)


@given(
    status=st.integers(min_value=100, max_value=599).filter(lambda s: not 200 <= s <= 299),
    value=st.sampled_from(["true", "false"]),
    spelling=st.sampled_from(["x-should-retry", "X-Should-Retry", "X-SHOULD-RETRY"]),
    upper=st.booleans(),
    pad=st.sampled_from(["", " ", "\t"]),
)
def test_x_should_retry_overrides(
    status: int, value: str, spelling: str, upper: bool, pad: str
) -> None:
    header = pad + (value.upper() if upper else value) + pad
    result = classify(HttpResponse(status, {spelling: header}))
    assert type(result) is (Retriable if value == "true" else Permanent)


@pytest.mark.parametrize(
    ("status", "header", "policy", "verdict"),
    [
        # x-should-retry wins over the policy's lists...
        (499, "false", DEFAULT_POLICY, Permanent),  # 499 is a default extra retriable
        (404, "false", RetryPolicy(extra_retriable_statuses=[404]), Permanent),
        (501, "true", RetryPolicy(extra_permanent_statuses=[501]), Retriable),
        # ... and over the built-in rule,
        (400, "true", DEFAULT_POLICY, Retriable),
        (503, "false", DEFAULT_POLICY, Permanent),
        (429, "false", DEFAULT_POLICY, Permanent),
        # and the policy's permanent list wins over the built-in rule.
        (501, None, RetryPolicy(extra_permanent_statuses=[501]), Permanent),
        (404, None, RetryPolicy(extra_retriable_statuses=[404]), Retriable),
    ],
)
def test_classification_precedence(
    status: int, header: str | None, policy: RetryPolicy, verdict: type[Retriable | Permanent]
) -> None:
    headers = {} if header is None else {"X-Should-Retry": header}
    result = classify(HttpResponse(status, headers), policy)
    assert type(result) is verdict
    assert isinstance(result, Retriable | Permanent)
    assert result.rate_limited is (status == 429)


@pytest.mark.parametrize("value", ["", "yes", "1", "maybe", "truefalse"])
def test_unknown_x_should_retry_is_ignored(value: str) -> None:
    for status in (400, 429, 503):
        result = classify(HttpResponse(status, {"x-should-retry": value}))
        assert type(result) is expected_verdict(status)


def test_x_should_retry_does_not_turn_success_into_failure() -> None:
    assert isinstance(classify(HttpResponse(200, {"x-should-retry": "true"})), Success)
    assert isinstance(classify(HttpResponse(201, {"x-should-retry": "false"})), Success)


def test_policy_status_lists() -> None:
    policy = RetryPolicy(extra_retriable_statuses=[404], extra_permanent_statuses=[501])
    assert isinstance(classify(HttpResponse(404), policy), Retriable)
    assert isinstance(classify(HttpResponse(501), policy), Permanent)
    assert isinstance(classify(HttpResponse(499), policy), Permanent)  # default replaced
    assert isinstance(classify(HttpResponse(499)), Retriable)


def test_headers_are_lower_cased_and_immutable() -> None:
    response = HttpResponse(429, {"Retry-After": "3", "X-Request-Id": "abc"})
    assert dict(response.headers) == {"retry-after": "3", "x-request-id": "abc"}
    with pytest.raises(TypeError):
        response.headers["retry-after"] = "4"  # type: ignore[index]  # proving it is read-only
    assert response == HttpResponse(429, {"retry-after": "3", "x-request-id": "abc"})
    hash(response)


def test_rate_limited_only_for_429() -> None:
    rate_limited = classify(HttpResponse(429))
    assert isinstance(rate_limited, Retriable)
    assert rate_limited.rate_limited
    overloaded = classify(HttpResponse(503))
    assert isinstance(overloaded, Retriable)
    assert not overloaded.rate_limited


# ---------------------------------------------------------------------------- policy


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_attempts": 0}, "'max_attempts' must be >= 1: 0"),
        ({"base": timedelta(0)}, "base must be positive, got 0:00:00"),
        ({"cap": timedelta(seconds=-1)}, "cap must be positive, got -1 day, 23:59:59"),
        ({"factor": 0.5}, "'factor' must be >= 1.0: 0.5"),
        ({"factor": float("inf")}, "factor must be finite, got inf"),
        (
            {"retry_after_ceiling": timedelta(seconds=-1)},
            "retry_after_ceiling must not be negative, got -1 day, 23:59:59",
        ),
        (
            {"deadline_margin": timedelta(seconds=-1)},
            "deadline_margin must not be negative, got -1 day, 23:59:59",
        ),
        (
            {"extra_retriable_statuses": [500, 501], "extra_permanent_statuses": [501, 500]},
            "statuses both retriable and permanent: [500, 501]",
        ),
    ],
)
def test_policy_rejects_nonsense(kwargs: dict[str, object], message: str) -> None:
    """A configuration error names the setting and the value (users read these)."""
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]  # kwargs are deliberately wrong


def test_policy_defaults() -> None:
    assert DEFAULT_POLICY.max_attempts == 6
    assert DEFAULT_POLICY.base == timedelta(seconds=1)
    assert DEFAULT_POLICY.factor == 2.0
    assert DEFAULT_POLICY.cap == timedelta(seconds=60)
    assert DEFAULT_POLICY.extra_retriable_statuses == frozenset({499})
    assert RetryPolicy(max_attempts=5).max_attempts == 5
    assert RetryPolicy(max_attempts=100).max_attempts == 100


# --------------------------------------------------------------------------- backoff


def test_backoff_values() -> None:
    assert backoff(1, jitter=0.0) == timedelta(0)
    assert backoff(1, jitter=0.5) == timedelta(seconds=0.5)
    assert backoff(3, jitter=0.5) == timedelta(seconds=2)
    assert backoff(100, jitter=0.5) == timedelta(seconds=30)  # capped at 60 s before jitter
    assert backoff(0, jitter=0.5) == backoff(1, jitter=0.5)


@pytest.mark.parametrize("jitter", [-0.1, 1.0, 1.5, float("nan")])
def test_backoff_rejects_jitter_outside_unit_interval(jitter: float) -> None:
    with pytest.raises(ValueError, match="jitter"):
        backoff(1, jitter=jitter)


@given(budget_used=st.integers(min_value=-5, max_value=100_000), jitter=jitters, policy=policies)
def test_backoff_never_exceeds_cap(budget_used: int, jitter: float, policy: RetryPolicy) -> None:
    delay = backoff(budget_used, jitter=jitter, policy=policy)
    assert timedelta(0) <= delay <= policy.cap


@given(budget_used=st.integers(min_value=1, max_value=60), jitter=jitters)
def test_backoff_grows_with_the_budget_used(budget_used: int, jitter: float) -> None:
    assert backoff(budget_used, jitter=jitter) <= backoff(budget_used + 1, jitter=jitter)


# ------------------------------------------------------------------------ retry-after


def seconds_text(delay: timedelta) -> str:
    """``delay`` as a ``retry-after`` value: decimal seconds, microsecond precision."""
    whole = delay.days * 86_400 + delay.seconds
    return f"{whole}.{delay.microseconds:06d}" if delay.microseconds else str(whole)


@given(delay=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=10_000)), now=nows)
def test_retry_after_seconds_round_trip(delay: timedelta, now: datetime) -> None:
    assert parse_retry_after({"Retry-After": seconds_text(delay)}, now) == delay


@given(now=nows, offset=st.integers(min_value=-86_400 * 30, max_value=86_400 * 30))
def test_retry_after_http_date_round_trip(now: datetime, offset: int) -> None:
    when = (now + timedelta(seconds=offset)).replace(microsecond=0)
    text = format_datetime(when, usegmt=True)
    assert text.endswith(" GMT")
    assert parse_retry_after({"retry-after": text}, now) == max(when - now, timedelta(0))


@given(ms=st.integers(min_value=0, max_value=10**9), now=nows)
def test_retry_after_ms_round_trip(ms: int, now: datetime) -> None:
    headers = {"retry-after-ms": str(ms), "retry-after": "99999"}
    assert parse_retry_after(headers, now) == timedelta(milliseconds=ms)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"retry-after": "3"}, timedelta(seconds=3)),
        ({"Retry-After": " 2.5 "}, timedelta(seconds=2.5)),
        ({"retry-after": "0"}, timedelta(0)),
        ({"retry-after": "-5"}, timedelta(0)),
        ({"retry-after-ms": "1500.5"}, timedelta(milliseconds=1500.5)),
        ({"retry-after-ms": "-1"}, timedelta(0)),
        ({"retry-after-ms": "0.001"}, timedelta(microseconds=1)),
        ({"retry-after-ms": "0.0015"}, timedelta(microseconds=2)),  # half to even
        ({"retry-after-ms": "0.0025"}, timedelta(microseconds=2)),
        ({"retry-after-ms": "soon", "retry-after": "7"}, timedelta(seconds=7)),
        ({"RETRY-AFTER-MS": "250"}, timedelta(milliseconds=250)),
        ({"retry-after": "Sat, 01 Mar 2025 12:00:30 GMT"}, timedelta(seconds=30)),
        ({"retry-after": "Sat, 01 Mar 2025 11:00:00 GMT"}, timedelta(0)),
        ({"retry-after": "Sat, 01 Mar 2025 12:01:00 -0000"}, timedelta(minutes=1)),
        ({"retry-after": "9" * 40}, timedelta.max),
        ({"retry-after": ""}, None),
        ({"retry-after": "soon"}, None),
        ({"retry-after": "nan"}, None),
        ({"retry-after": "inf"}, None),
        ({"retry-after": "1e3"}, None),
        ({"retry-after": "1_000"}, None),
        ({"retry-after": "\u0663"}, None),  # an Arabic-Indic digit is not a delay
        ({"retry-after": "Sat, 99 Foo 2025 99:99:99 GMT"}, None),
    ],
)
def test_parse_retry_after_examples(headers: dict[str, str], expected: timedelta | None) -> None:
    assert parse_retry_after(headers, NOW) == expected


@given(ms=st.text(max_size=30), value=st.text(max_size=60), now=nows)
def test_parse_retry_after_never_raises(ms: str, value: str, now: datetime) -> None:
    result = parse_retry_after({"retry-after-ms": ms, "retry-after": value}, now)
    assert result is None or result >= timedelta(0)


def test_parse_retry_after_accepts_a_naive_now() -> None:
    naive = NOW.replace(tzinfo=None)
    headers = {"retry-after": format_datetime(NOW + timedelta(seconds=9), usegmt=True)}
    assert parse_retry_after(headers, naive) == timedelta(seconds=9)


def test_decide_reads_an_http_date_relative_to_now() -> None:
    headers = {"retry-after": format_datetime(NOW + timedelta(seconds=42), usegmt=True)}
    decision = decide(failed(503, headers), budget_used=1, now=NOW, deadline=FAR, jitter=0.5)
    assert decision == RetryAt(
        NOW + timedelta(seconds=42),
        timedelta(seconds=42),
        failed(503).failure,
        DelaySource.RETRY_AFTER,
    )


# ---------------------------------------------------------------------------- decide


def failed(status: int, headers: dict[str, str] | None = None) -> Retriable | Permanent:
    result = classify(HttpResponse(status, headers or {}, "{}"))
    assert isinstance(result, Retriable | Permanent)
    return result


def expected_decision(
    classification: Retriable | Permanent,
    *,
    retry_after: str | None,
    budget_used: int,
    now: datetime,
    deadline: datetime,
    jitter: float,
    policy: RetryPolicy,
) -> RetryAt | GiveUp:
    """engine.md section 2 for an answer with at most a whole-seconds ``retry-after``,
    written out independently of ``decide``."""
    exponent = max(budget_used - 1, 0)
    computed = jitter * min(
        policy.cap.total_seconds(), policy.base.total_seconds() * policy.factor**exponent
    )
    delay, source = timedelta(seconds=computed), DelaySource.BACKOFF
    if retry_after is not None:
        asked = timedelta(seconds=max(int(retry_after), 0))
        if asked <= policy.retry_after_ceiling:  # a retry-after equal to it is honoured
            delay, source = asked, DelaySource.RETRY_AFTER
    failure = classification.failure
    pause = now + delay if classification.rate_limited else None
    if isinstance(classification, Permanent):
        return GiveUp(failure, GiveUpReason.PERMANENT, pause)
    if budget_used >= policy.max_attempts:
        return GiveUp(failure, GiveUpReason.BUDGET_SPENT, pause)
    if now + delay >= deadline - policy.deadline_margin:
        return GiveUp(failure, GiveUpReason.DEADLINE, pause)
    return RetryAt(now + delay, delay, failure, source, pause)


CEILING = RetryPolicy(retry_after_ceiling=timedelta(seconds=300))


@given(
    now=nows,
    window=st.integers(min_value=0, max_value=86_400),
    budget_used=st.integers(min_value=1, max_value=60),
    jitter=jitters,
    policy=policies,
    status=st.sampled_from([408, 429, 500, 503, 499, 400, 404]),
    retry_after=st.none() | st.integers(min_value=-10, max_value=7_200).map(str),
    should_retry=st.sampled_from([None, None, "true", "false"]),
)
# The boundaries, every run: a retry-after equal to the ceiling is honoured, one second
# more is not; a retry due exactly at the deadline (less the margin) is not scheduled,
# one a second earlier is; the last attempt of the budget gives up.
# A 429 pauses the model whichever way the request goes.
@example(NOW, 86_400, 1, 0.5, CEILING, 503, "300", None)
@example(NOW, 86_400, 1, 0.5, CEILING, 429, "301", None)
@example(NOW, 300, 1, 0.5, CEILING, 429, "300", None)
@example(NOW, 301, 1, 0.5, CEILING, 503, "300", None)
@example(
    NOW, 310, 1, 0.5, attrs.evolve(CEILING, deadline_margin=timedelta(seconds=10)), 503, "300", None
)
@example(NOW, 86_400, 5, 0.5, RetryPolicy(max_attempts=6), 500, None, None)
@example(NOW, 86_400, 6, 0.5, RetryPolicy(max_attempts=6), 429, None, None)
@example(NOW, 86_400, 1, 0.5, CEILING, 429, "7", "false")
def test_decide_follows_the_spec(
    now: datetime,
    window: int,
    budget_used: int,
    jitter: float,
    policy: RetryPolicy,
    status: int,
    retry_after: str | None,
    should_retry: str | None,
) -> None:
    """Retries exactly when the budget and the deadline allow one, never outside them."""
    deadline = now + timedelta(seconds=window)
    headers = {} if retry_after is None else {"retry-after": retry_after}
    if should_retry is not None:
        headers["x-should-retry"] = should_retry
    classification = failed(status, headers)
    decision = decide(
        classification,
        budget_used=budget_used,
        now=now,
        deadline=deadline,
        jitter=jitter,
        policy=policy,
    )
    assert decision == expected_decision(
        classification,
        retry_after=retry_after,
        budget_used=budget_used,
        now=now,
        deadline=deadline,
        jitter=jitter,
        policy=policy,
    )
    if isinstance(decision, RetryAt):
        assert now <= decision.not_before < deadline - policy.deadline_margin
        if decision.source is DelaySource.BACKOFF:
            assert decision.delay <= policy.cap
        else:
            assert decision.delay <= policy.retry_after_ceiling
    if status == 429:
        assert decision.pause_until is not None
        assert decision.pause_until >= now
    else:
        assert decision.pause_until is None


def test_retry_after_equal_to_the_ceiling_is_honoured() -> None:
    for headers in ({"retry-after": "300"}, {"retry-after-ms": "300000"}):
        decision = decide(failed(503, headers), budget_used=1, now=NOW, deadline=FAR, jitter=0.5)
        assert isinstance(decision, RetryAt)
        assert (decision.source, decision.delay) == (DelaySource.RETRY_AFTER, timedelta(minutes=5))
    over = decide(
        failed(503, {"retry-after-ms": "300001"}), budget_used=1, now=NOW, deadline=FAR, jitter=0.5
    )
    assert isinstance(over, RetryAt)
    assert over.source is DelaySource.BACKOFF


def test_retry_after_within_ceiling_replaces_backoff() -> None:
    decision = decide(
        failed(503, {"retry-after": "120"}), budget_used=1, now=NOW, deadline=FAR, jitter=0.5
    )
    assert decision == RetryAt(
        NOW + timedelta(seconds=120),
        timedelta(seconds=120),
        failed(503).failure,
        DelaySource.RETRY_AFTER,
    )


def test_retry_after_beyond_ceiling_is_ignored() -> None:
    decision = decide(
        failed(503, {"retry-after": "301"}), budget_used=1, now=NOW, deadline=FAR, jitter=0.5
    )
    assert isinstance(decision, RetryAt)
    assert decision.source is DelaySource.BACKOFF
    assert decision.delay == timedelta(seconds=0.5)


def test_429_pauses_the_model() -> None:
    decision = decide(
        failed(429, {"retry-after-ms": "2500"}), budget_used=2, now=NOW, deadline=FAR, jitter=0.1
    )
    assert isinstance(decision, RetryAt)
    assert decision.pause_until == NOW + timedelta(seconds=2.5)
    # A rate limit still pauses the model when this request gives up.
    spent = decide(
        failed(429, {"retry-after": "4"}), budget_used=6, now=NOW, deadline=FAR, jitter=0.1
    )
    assert isinstance(spent, GiveUp)
    assert spent.pause_until == NOW + timedelta(seconds=4)


def test_permanent_failures_give_up_at_once() -> None:
    decision = decide(failed(400), budget_used=1, now=NOW, deadline=FAR, jitter=0.5)
    assert decision == GiveUp(failed(400).failure, GiveUpReason.PERMANENT)
    builder = classify(TransportError(TransportErrorKind.BUILDER, "CR/LF in header"))
    assert isinstance(builder, Permanent)
    assert decide(builder, budget_used=1, now=NOW, deadline=FAR, jitter=0.5) == GiveUp(
        builder.failure, GiveUpReason.PERMANENT
    )


def test_budget_exhaustion_gives_up() -> None:
    policy = RetryPolicy(max_attempts=5)
    lost = classify(TransportError(TransportErrorKind.LOST))
    assert isinstance(lost, Retriable)
    for used in range(1, 5):
        decision = decide(lost, budget_used=used, now=NOW, deadline=FAR, jitter=0.5, policy=policy)
        assert isinstance(decision, RetryAt)
    decision = decide(lost, budget_used=5, now=NOW, deadline=FAR, jitter=0.5, policy=policy)
    assert decision == GiveUp(lost.failure, GiveUpReason.BUDGET_SPENT)


def test_deadline_and_margin_give_up() -> None:
    retriable = failed(500)
    # Backoff of 0.5 s would land exactly on the deadline: not allowed.
    at_deadline = NOW + timedelta(seconds=0.5)
    decision = decide(retriable, budget_used=1, now=NOW, deadline=at_deadline, jitter=0.5)
    assert decision == GiveUp(retriable.failure, GiveUpReason.DEADLINE)
    # Just inside the deadline, but not inside the margin.
    policy = RetryPolicy(deadline_margin=timedelta(seconds=10))
    deadline = NOW + timedelta(seconds=10.4)
    decision = decide(
        retriable, budget_used=1, now=NOW, deadline=deadline, jitter=0.5, policy=policy
    )
    assert decision == GiveUp(retriable.failure, GiveUpReason.DEADLINE)
    ok = decide(retriable, budget_used=1, now=NOW, deadline=deadline, jitter=0.5)
    assert isinstance(ok, RetryAt)
    # Already past the deadline.
    late = decide(retriable, budget_used=1, now=NOW, deadline=NOW, jitter=0.0)
    assert late == GiveUp(retriable.failure, GiveUpReason.DEADLINE)


def test_decide_rejects_bad_jitter() -> None:
    with pytest.raises(ValueError, match="jitter"):
        decide(failed(500), budget_used=1, now=NOW, deadline=FAR, jitter=1.0)
