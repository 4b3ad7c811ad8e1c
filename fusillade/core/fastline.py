"""The fast path of input-line validation: orjson, and proof that it agrees.

Theory of operation
-------------------
``fast_templates`` returns the template of a line only when it can show that the strict
path (``JsonlValidator``'s checks over ``strictjson.loads_strict``) would give the very
same template; otherwise ``None``, and the caller runs the strict path, which stays the
only source of problems and their messages. The duplicate ``custom_id`` check is the
caller's in both cases. Each difference between orjson and the strict path is closed by
one condition:

- Syntax, UTF-8, ``NaN``/``Infinity``, numbers out of the float range: orjson rejects
  all of these (and lone surrogate escapes, which the strict path accepts): any orjson
  error means "ask the strict path".
- Duplicate keys, which orjson accepts silently (the last one wins). A duplicate leaves
  the parsed value with fewer ``key: value`` pairs than the text. Count colons: in the
  text, every colon is either structural (one per pair) or inside a string; in
  ``orjson.dumps`` of the parsed value, likewise, and a string keeps exactly its colons
  when the text has no ``\\u003a`` escape (the only other spelling of a colon; any
  ``\\u003`` sends the line to the strict path). Every parsed pair and string comes from
  one place in the text, so the counts are equal exactly when no pair was dropped, and
  never is the text's count the smaller.
- Big integers: orjson reads an integer outside the 64-bit range as a float (the strict
  path keeps it exact). Such a float is at least 2**63 in magnitude, which both orjson and
  Python write in exponent form (``9.2e+18``): an ``e+`` after a digit in the re-encoded
  value sends the line to the strict path.
- Float spelling: ``orjson.dumps`` writes floats as Python's ``repr`` does (the shortest
  round-trip digits, the same notation) except for small negative exponents:
  ``0.00001`` and ``2.5e-7`` where ``repr`` has ``1e-05`` and ``2.5e-07``. Any
  ``0.0000``, or ``e-`` after a digit, sends the line to the strict path (tests compare
  the two encoders over random bit patterns). Strings, integers and the rest are escaped
  and spelled alike by both (compact separators, raw UTF-8, the same escapes).
- Nesting: orjson reads up to 1,024 levels and writes up to 255 (more is an error, so
  the strict path); the line's brackets bound its depth, and only when there are more
  than ``max_depth`` of them is the parsed value walked.

The field rules are the module ``jsonl``'s, checked for the passing case only; a string
from orjson never holds an unpaired surrogate, so "storable" reduces to "no NUL".

The text conditions are checked once over a whole batch of lines (joined), which costs
far less than per line; only a batch where one fails is checked line by line.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

import attrs
import orjson

from fusillade.core.models import RequestTemplate
from fusillade.core.strictjson import LINE_BREAKS, depth_exceeds

if TYPE_CHECKING:
    from fusillade.core.jsonl import JsonlLimits

# An exponent after a digit: a float that orjson and repr may spell differently, or an
# integer that orjson read as a float (see above). The literal "e" first lets the regex
# engine skip ahead quickly; the look-behind then wants a digit before it.
_EXPONENT: Final = re.compile(rb"e[-+](?<=[0-9]e[-+])")
_SMALL_DECIMAL: Final = b"0.0000"
_COLON_ESCAPE: Final = b"\\u003"
# The only way to write NUL in JSON (raw control characters are invalid).
_NUL_ESCAPE: Final = b"\\u0000"


def _divergent(encoded: bytes) -> bool:
    """Whether orjson's encoding may differ from the strict path's (a number, see above)."""
    return _SMALL_DECIMAL in encoded or _EXPONENT.search(encoded) is not None


def _escape_line_breaks(text: str) -> str:
    """``text.translate(LINE_BREAKS)``, faster when there are none (the usual case)."""
    for char, escaped in LINE_BREAKS.items():
        if chr(char) in text:
            text = text.replace(chr(char), escaped)
    return text


@attrs.define
class _Passed:
    """The lines of a batch that passed the per-line checks, field by field."""

    index: list[int] = attrs.Factory(list)  # the line's position in the batch
    raws: list[bytes] = attrs.Factory(list)
    bodies: list[bytes] = attrs.Factory(list)  # orjson's encoding of each body
    ids: list[str] = attrs.Factory(list)
    models: list[str] = attrs.Factory(list)
    urls: list[str] = attrs.Factory(list)
    # Lines with keys besides the four: position in these lists, orjson's encoding.
    wholes: dict[int, bytes] = attrs.Factory(dict)

    def colons(self, k: int) -> int:
        """Colons in orjson's encoding of line ``k``'s value."""
        whole = self.wholes.get(k)
        return whole.count(b":") if whole is not None else self._colons_of_four(k)

    def all_colons(self) -> int:
        """``sum(self.colons(k) for k in ...)``, computed on joined fields."""
        total = 4 * len(self.ids) + sum(
            w.count(b":") - self._colons_of_four(k) for k, w in self.wholes.items()
        )
        total += "\n".join(self.ids).count(":") + "\n".join(self.urls).count(":")
        return total + b"\n".join(self.bodies).count(b":")

    def _colons_of_four(self, k: int) -> int:
        # custom_id, method, url and body alone: the top level's colons are these four
        # and those inside the three strings and the body.
        return 4 + self.ids[k].count(":") + self.urls[k].count(":") + self.bodies[k].count(b":")


# Every byte but "{", "[" and the line separator: deleting them leaves a line's brackets.
_NOT_BRACKETS: Final = bytes(b for b in range(256) if b not in b"{[\n")


def fast_templates(
    lines: Sequence[bytes | None], limits: JsonlLimits
) -> list[RequestTemplate | None]:
    """The template of each line that is shown to be valid, else ``None``.

    ``lines`` are lines, with or without their line break (JSON whitespace to orjson;
    ``None`` for one to skip). ``None`` in the result says nothing about validity: the
    line may be valid, but this path could not show it cheaply; ask the strict path.
    """
    out: list[RequestTemplate | None] = [None] * len(lines)
    passed = _read(lines, limits)
    if not passed.index:
        return out
    raws = b"\n".join(passed.raws)
    bodies = b"\n".join(passed.bodies)
    depths = raws.translate(None, _NOT_BRACKETS).split(b"\n")
    batch_ok = (
        raws.count(b":") == passed.all_colons()
        and _COLON_ESCAPE not in raws
        and _NUL_ESCAPE not in raws
        and not _divergent(bodies)
        and not any(_divergent(w) for w in passed.wholes.values())
        and len(depths) == len(passed.raws)
        and max(map(len, depths)) <= limits.max_depth
    )
    # orjson writes no raw line break (it escapes control characters): one decode.
    texts = bodies.decode()
    if not texts.isascii():
        texts = _escape_line_breaks(texts)
    for k, (i, text) in enumerate(zip(passed.index, texts.split("\n"), strict=True)):
        if batch_ok or _line_ok(passed, k, limits.max_depth):
            out[i] = RequestTemplate(
                custom_id=passed.ids[k], model=passed.models[k], body=text, path=passed.urls[k]
            )
    return out


def _line_ok(passed: _Passed, k: int, max_depth: int) -> bool:
    """The batch-wide conditions, for line ``k`` alone."""
    raw = passed.raws[k]
    return not (
        raw.count(b":") != passed.colons(k)
        or _COLON_ESCAPE in raw
        or "\x00" in passed.ids[k]
        or "\x00" in passed.models[k]
        or _divergent(passed.wholes.get(k, passed.bodies[k]))
        or (
            raw.count(b"{") + raw.count(b"[") > max_depth
            # parsed again: keeping every line's value alive costs more (garbage collection)
            and depth_exceeds(orjson.loads(raw), max_depth)
        )
    )


def _read(lines: Sequence[bytes | None], limits: JsonlLimits) -> _Passed:
    """Parse each line and check its fields (the per-line part of the fast path)."""
    loads = orjson.loads
    dumps = orjson.dumps
    max_custom_id = limits.max_custom_id
    max_model_chars = limits.max_model_chars
    allowed = limits.allowed_endpoints
    required = limits.required_url
    passed = _Passed()
    for i, raw in enumerate(lines):
        if raw is None:
            continue
        try:
            obj = loads(raw)
            # A TypeError: the line or its body is not an object.
            custom_id = obj["custom_id"]
            method = obj["method"]
            url = obj["url"]
            body = obj["body"]
            model = body["model"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            continue
        if (
            type(obj) is not dict
            or type(body) is not dict
            or type(custom_id) is not str
            or type(model) is not str
            or method != "POST"
            or url not in allowed  # so a string, as each of them is
            or not 0 < len(custom_id) <= max_custom_id
            or not 0 < len(model) <= max_model_chars
            or (required is not None and url != required)
        ):
            continue
        try:
            encoded = dumps(body)
            if len(obj) != 4:
                passed.wholes[len(passed.index)] = dumps(obj)
        except orjson.JSONEncodeError:  # nested deeper than orjson writes
            continue
        passed.index.append(i)
        passed.raws.append(raw)
        passed.bodies.append(encoded)
        passed.ids.append(custom_id)
        passed.models.append(model)
        passed.urls.append(url)
    return passed
