"""Rate-limit headers of each provider, read by hand; and parsing never raises."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fusillade.core.scheduling.headers import ProviderLimits, Window, go_duration, parse_limits

NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)


def test_openai_headers() -> None:
    headers = {
        "X-RateLimit-Limit-Requests": "5000",
        "x-ratelimit-remaining-requests": "4999",
        "x-ratelimit-reset-requests": "12ms",
        "x-ratelimit-limit-tokens": "800000",
        "X-RATELIMIT-REMAINING-TOKENS": "799000",
        "x-ratelimit-reset-tokens": "6m0s",
    }
    assert parse_limits(headers, now=NOW) == ProviderLimits(
        requests=Window(limit=5000, remaining=4999, reset_after=0.012),
        tokens=Window(limit=800000, remaining=799000, reset_after=360.0),
    )


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("20ms", 0.02),
        ("1h2m3.5s", 3723.5),
        ("0s", 0.0),
        ("2.5", 2.5),
        ("", None),
        ("-1s", None),
        ("1x", None),
        ("s", None),
        ("nan", None),
        ("1e400", None),
    ],
)
def test_go_durations(text: str, seconds: float | None) -> None:
    if seconds is None:
        assert go_duration(text) is None
    else:
        assert go_duration(text) == pytest.approx(seconds)


def test_anthropic_headers() -> None:
    headers = {
        "anthropic-ratelimit-requests-limit": "50",
        "anthropic-ratelimit-requests-remaining": "49",
        "anthropic-ratelimit-requests-reset": "2025-06-01T12:00:30Z",
        "anthropic-ratelimit-tokens-limit": "40000",
        "anthropic-ratelimit-tokens-remaining": "39000",
        "anthropic-ratelimit-tokens-reset": "2025-06-01T12:01:00+00:00",
        "anthropic-ratelimit-input-tokens-limit": "1",
    }
    assert parse_limits(headers, now=NOW) == ProviderLimits(
        requests=Window(limit=50, remaining=49, reset_after=30.0),
        tokens=Window(limit=40000, remaining=39000, reset_after=60.0),
    )


def test_anthropic_input_tokens_when_no_total() -> None:
    headers = {
        "anthropic-ratelimit-input-tokens-limit": "20000",
        "anthropic-ratelimit-input-tokens-remaining": "100",
        "anthropic-ratelimit-input-tokens-reset": "2025-06-01T11:59:00Z",  # past: 0
    }
    assert parse_limits(headers, now=NOW) == ProviderLimits(
        requests=None, tokens=Window(limit=20000, remaining=100, reset_after=0.0)
    )


def test_ietf_plain_fields() -> None:
    headers = {"RateLimit-Limit": "100", "RateLimit-Remaining": "7", "RateLimit-Reset": "30"}
    assert parse_limits(headers, now=NOW) == ProviderLimits(
        requests=Window(limit=100, remaining=7, reset_after=30.0), tokens=None
    )


def test_ietf_structured_fields() -> None:
    headers = {"RateLimit-Policy": '"p";q=100;w=60', "RateLimit": '"p";r=50;t=30'}
    assert parse_limits(headers, now=NOW) == ProviderLimits(
        requests=Window(limit=100, remaining=50, reset_after=30.0), tokens=None
    )


def test_ietf_structured_fields_match_by_name() -> None:
    headers = {
        "RateLimit-Policy": '"burst";q=10;w=1, "day";q=1000;w=86400',
        "RateLimit": '"day";r=900;t=3600',
    }
    assert parse_limits(headers, now=NOW) == ProviderLimits(
        requests=Window(limit=1000, remaining=900, reset_after=3600.0), tokens=None
    )


def test_no_known_header_is_none() -> None:
    assert parse_limits({"content-type": "application/json", "retry-after": "3"}, now=NOW) is None
    assert parse_limits({}, now=NOW) is None


def test_garbage_values_are_ignored() -> None:
    headers = {
        "x-ratelimit-limit-requests": "lots",
        "x-ratelimit-remaining-requests": "-3",
        "x-ratelimit-reset-requests": "soon",
        "x-ratelimit-limit-tokens": "1000",
        "anthropic-ratelimit-requests-reset": "yesterday",
    }
    assert parse_limits(headers, now=NOW) == ProviderLimits(
        requests=None, tokens=Window(limit=1000, remaining=None, reset_after=None)
    )


def test_naive_now_against_aware_reset_is_ignored() -> None:
    headers = {
        "anthropic-ratelimit-requests-limit": "5",
        "anthropic-ratelimit-requests-reset": "2025-06-01T12:00:30Z",
    }
    limits = parse_limits(headers, now=datetime(2025, 6, 1, 12))
    assert limits == ProviderLimits(
        requests=Window(limit=5, remaining=None, reset_after=None), tokens=None
    )


KNOWN = (
    [
        f"x-ratelimit-{part}-{kind}"
        for part in ("limit", "remaining", "reset")
        for kind in ("requests", "tokens")
    ]
    + [
        f"anthropic-ratelimit-{kind}-{part}"
        for kind in ("requests", "tokens", "input-tokens")
        for part in ("limit", "remaining", "reset")
    ]
    + ["ratelimit-limit", "ratelimit-remaining", "ratelimit-reset", "ratelimit-policy", "ratelimit"]
)

names = st.one_of(st.sampled_from(KNOWN), st.sampled_from(KNOWN).map(str.upper), st.text())
values = st.one_of(
    st.text(),
    st.integers().map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.datetimes(timezones=st.none() | st.just(UTC)).map(datetime.isoformat),
    st.from_regex(r'"[a-z]{0,3}";q=[0-9]{1,20};w=[0-9]{0,3}(, ?"[a-z]?";[rt]=-?[0-9]{1,25})*'),
    st.from_regex(r"([0-9]{0,20}(\.[0-9]{0,12})?(h|m|s|ms|us|µs|ns)?){1,10}"),
)
nows = st.datetimes(timezones=st.none() | st.just(UTC))


@given(st.dictionaries(names, values), nows)
def test_parse_limits_is_total(headers: dict[str, str], now: datetime) -> None:
    limits = parse_limits(headers, now=now)
    if limits is not None:
        for window in (limits.requests, limits.tokens):
            if window is None:
                continue
            assert window.limit is None or window.limit >= 0
            assert window.remaining is None or window.remaining >= 0
            assert window.reset_after is None or 0 <= window.reset_after < float("inf")
