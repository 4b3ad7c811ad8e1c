"""Completion windows and configuration durations."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fusillade.core.windows import MAX_COMPLETION_WINDOW, parse_completion_window, parse_duration
from fusillade.errors import ConfigError, ValidationError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("24h", timedelta(hours=24)),
        ("1h", timedelta(hours=1)),
        ("30m", timedelta(minutes=30)),
        ("7d", timedelta(days=7)),
        ("48h", timedelta(hours=48)),
        ("90s", timedelta(seconds=90)),
        ("1s", timedelta(seconds=1)),
        ("365d", MAX_COMPLETION_WINDOW),
        ("8760h", MAX_COMPLETION_WINDOW),
    ],
)
def test_valid_windows(text: str, expected: timedelta) -> None:
    assert parse_completion_window(text) == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        "0h",
        "00h",
        "024h",
        "-1h",
        "+1h",
        "24",
        "h",
        "24H",
        "24 h",
        " 24h",
        "24h ",
        "24h\n",
        "1.5h",
        "24hours",
        "1w",
        "1y",
        "24ms",
        "1h30m",
        "\u0662\u0664h",  # Arabic-Indic digits
        "366d",
        "999999999d",
        "9" * 400 + "d",
        None,
        24,
        86400.0,
        b"24h",
        ["24h"],
    ],
)
def test_invalid_windows(value: object) -> None:
    with pytest.raises(ValidationError) as info:
        parse_completion_window(value)
    assert info.value.param == "completion_window"


@given(st.text(max_size=20))
def test_random_text_only_ever_raises_validation_error(text: str) -> None:
    param: str | None = None
    try:
        window = parse_completion_window(text)
    except ValidationError as error:
        param = error.param
        window = None
    if window is None:
        assert param == "completion_window"
    else:
        assert timedelta(0) < window <= MAX_COMPLETION_WINDOW


@given(
    number=st.integers(min_value=1, max_value=10**12),
    unit=st.sampled_from(["s", "m", "h", "d"]),
)
def test_generated_windows_parse_or_exceed_the_maximum(number: int, unit: str) -> None:
    size = {"s": 1, "m": 60, "h": 3_600, "d": 86_400}[unit]
    text = f"{number}{unit}"
    if number * size <= MAX_COMPLETION_WINDOW.total_seconds():
        assert parse_completion_window(text) == timedelta(seconds=number * size)
    else:
        with pytest.raises(ValidationError):
            parse_completion_window(text)


# -------------------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5s", timedelta(seconds=5)),
        ("250ms", timedelta(milliseconds=250)),
        ("1.5s", timedelta(seconds=1.5)),
        ("0s", timedelta(0)),
        ("0.5ms", timedelta(microseconds=500)),
        ("2m", timedelta(minutes=2)),
        ("1h", timedelta(hours=1)),
        ("1d", timedelta(days=1)),
        ("0.0000005s", timedelta(0)),  # half a microsecond rounds to even
        ("0.0000015s", timedelta(microseconds=2)),
    ],
)
def test_valid_durations(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "5", "s", "-5s", "+5s", ".5s", "5.s", " 5s", "5s ", "5 s", "5S", "5us", "1e3s", "inf s"],
)
def test_invalid_durations(text: str) -> None:
    with pytest.raises(ConfigError, match="poll_interval"):
        parse_duration(text, name="poll_interval")


def test_too_large_duration() -> None:
    with pytest.raises(ConfigError, match="too large"):
        parse_duration("999999999999d")


@given(st.text(max_size=20))
def test_random_durations_only_ever_raise_config_error(text: str) -> None:
    try:
        duration = parse_duration(text)
    except ConfigError:
        pass
    else:
        assert duration >= timedelta(0)


@given(st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=10**6)))
def test_duration_round_trips_through_microseconds(delay: timedelta) -> None:
    micros = (delay.days * 86_400 + delay.seconds) * 1_000_000 + delay.microseconds
    seconds, fraction = divmod(micros, 1_000_000)
    assert parse_duration(f"{seconds}.{fraction:06d}s") == delay
