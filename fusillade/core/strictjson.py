"""Strict JSON for input lines and result bodies.

Stricter than ``json.loads``: no ``NaN``/``Infinity``, no number outside the float range,
no duplicate keys at any depth, bounded nesting. ``BadJSON`` carries a message fit to
show the user. The decoder and encoders are made once (``json.loads``/``dumps`` with
options build new ones on every call, which costs more than parsing a typical line).
"""

from __future__ import annotations

import json
import math
from typing import Any, Final, NoReturn


class BadJSON(ValueError):
    """Raised by the parse hooks; its message is shown to the user."""


def _pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:  # pragma: no branch - a duplicate is always found
            if key in seen:
                raise BadJSON(f"duplicate key {show(key)}")
            seen.add(key)
    return obj


def _reject_constant(name: str) -> NoReturn:
    raise BadJSON(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BadJSON(f"number {show(text, 32)} is out of range")
    return value


def depth_exceeds(value: Any, limit: int) -> bool:
    """Whether a parsed value nests deeper than ``limit`` (``{}`` is depth 1)."""
    # Iterative, so a deep value cannot exhaust the Python stack here.
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False


# Made once: json.loads/dumps with options build a new decoder/encoder on every call,
# which costs more than parsing a typical line. Both are stateless, so sharing is safe.
_DECODER: Final = json.JSONDecoder(
    object_pairs_hook=_pairs_hook, parse_constant=_reject_constant, parse_float=_finite_float
)
ENCODER: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
ASCII_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def loads_strict(text: str, max_depth: int) -> Any:
    """Strict ``json.loads``; raises ``BadJSON`` with a message for the user."""
    try:
        value = _DECODER.decode(text)
    except RecursionError:
        # The C scanner recurses once per nesting level.
        raise BadJSON(f"nesting is deeper than {max_depth}") from None
    except BadJSON:
        raise
    except json.JSONDecodeError as e:
        raise BadJSON(f"invalid JSON: {e.msg} (column {e.colno})") from None
    except ValueError:
        # The only other ValueError: an integer over Python's int/str digit limit.
        raise BadJSON("an integer has too many digits") from None
    # Cheap pre-check: the nesting depth is at most the number of brackets.
    brackets = text.count("{") + text.count("[")
    if brackets > max_depth and depth_exceeds(value, max_depth):
        raise BadJSON(f"nesting is deeper than {max_depth}")
    return value


def storable(text: str) -> bool:
    """Whether PostgreSQL text can hold ``text``: no NUL, no unpaired surrogate."""
    if "\x00" in text:
        return False
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def show(text: str, limit: int = 64) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def dumps_compact(value: Any) -> str:
    """Compact JSON, UTF-8 kept as is; never contains a line break.

    Not even one that only some readers see: U+2028, U+2029 and U+0085 are escaped,
    because ``str.splitlines()`` (and so the common ``text.splitlines()`` over a
    downloaded JSONL file) splits on them.
    """
    text: str = ENCODER.encode(value)
    if not storable(text):
        # An unpaired surrogate (from a "\ud800" escape) cannot be written as UTF-8:
        # escape everything instead, which keeps the same JSON value.
        return str(ASCII_ENCODER.encode(value))
    if not text.isascii():
        text = text.translate(LINE_BREAKS)
    return text


# Inside JSON strings only (JSON's own syntax is ASCII), so escaping is always valid.
LINE_BREAKS = {0x2028: "\\u2028", 0x2029: "\\u2029", 0x85: "\\u0085"}
