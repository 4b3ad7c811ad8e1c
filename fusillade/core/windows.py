"""Durations written as text: batch completion windows and configuration values.

Both parsers are strict on purpose: no whitespace, no signs, no upper case, no unit-less
numbers. A value that is almost right is more likely a mistake than a wish.
"""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import ROUND_HALF_EVEN, Decimal

from fusillade.errors import ConfigError, ValidationError

_WINDOW = re.compile(r"([1-9][0-9]{0,8})([smhd])")
_DURATION = re.compile(r"([0-9]{1,12}(?:\.[0-9]{1,9})?)(ms|s|m|h|d)")

_UNIT_MICROS = {
    "ms": 1_000,
    "s": 1_000_000,
    "m": 60_000_000,
    "h": 3_600_000_000,
    "d": 86_400_000_000,
}

MAX_COMPLETION_WINDOW = timedelta(days=365)
"""The longest window accepted; it keeps ``created_at + window`` far from overflowing."""


def parse_completion_window(value: object) -> timedelta:
    """A batch's ``completion_window`` (``"24h"``, ``"30m"``, ``"7d"``, ``"90s"``...).

    The value is a positive whole number followed by one of ``s``, ``m``, ``h``, ``d``, at
    most ``MAX_COMPLETION_WINDOW``. Whether a window is *allowed* is the server's
    configuration; this only says what it means.

    Raises:
        ValidationError: anything else (``param="completion_window"``), including
            non-string values, whitespace, zero and unknown units.
    """
    if not isinstance(value, str):
        raise ValidationError(
            f"completion_window must be a string such as '24h', got {type(value).__name__}",
            param="completion_window",
        )
    match = _WINDOW.fullmatch(value)
    if match is None:
        raise ValidationError(
            f"invalid completion_window {value[:40]!r}: expected a positive whole number "
            "followed by s, m, h or d, such as '24h'",
            param="completion_window",
        )
    number, unit = match.groups()
    # At most 9 digits times a day is well inside timedelta, so this cannot overflow.
    window = timedelta(microseconds=int(number) * _UNIT_MICROS[unit])
    if window > MAX_COMPLETION_WINDOW:
        raise ValidationError(
            f"completion_window {value!r} is longer than the maximum of "
            f"{MAX_COMPLETION_WINDOW.days} days",
            param="completion_window",
        )
    return window


def parse_duration(text: str, *, name: str = "duration") -> timedelta:
    """A configuration duration: ``"250ms"``, ``"5s"``, ``"1.5s"``, ``"2m"``, ``"1h"``, ``"1d"``.

    A non-negative decimal number followed by one of ``ms``, ``s``, ``m``, ``h``, ``d``;
    zero is allowed (e.g. a safety margin of ``"0s"``). Fractions below a microsecond are
    rounded to the nearest microsecond.

    Raises:
        ConfigError: anything else, or a value too large to represent; the message names
            ``name`` (the setting being read).
    """
    match = _DURATION.fullmatch(text)
    if match is None:
        raise ConfigError(
            f"invalid {name} {text[:40]!r}: expected a number followed by ms, s, m, h or d, "
            "such as '250ms' or '1.5s'"
        )
    number, unit = match.groups()
    micros = (Decimal(number) * _UNIT_MICROS[unit]).to_integral_value(ROUND_HALF_EVEN)
    try:
        return timedelta(microseconds=int(micros))
    except OverflowError:
        raise ConfigError(f"{name} {text!r} is too large") from None
