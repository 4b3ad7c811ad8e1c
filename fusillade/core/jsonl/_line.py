"""The rules of one input line on its own: strict JSON and the request's fields.

``check_line`` needs nothing but the line and the limits; the rules that need the rest
of the file (duplicate ``custom_id``s, blank lines, counts, the problem cap) are
``JsonlValidator``'s.
"""

from __future__ import annotations

from typing import Any

import attrs

from fusillade.core.jsonl._limits import JsonlLimits, LineProblem, ProblemCode
from fusillade.core.models import RequestTemplate
from fusillade.core.strictjson import BadJSON, dumps_compact, loads_strict, show, storable


@attrs.frozen
class CheckedLine:
    """What ``check_line`` found in one line.

    ``problems`` come in the order the fields are checked (``custom_id``, ``method``,
    ``url``, ``body``). ``custom_id`` is the line's id whenever that field is valid, even
    when another is not: the caller checks that it is new in the file. ``template`` is
    the request when the line has no problem at all.
    """

    problems: tuple[LineProblem, ...]
    custom_id: str | None = None
    template: RequestTemplate | None = None


def check_line(n: int, raw: bytes, limits: JsonlLimits) -> CheckedLine:
    """Every rule of line ``n`` (1-based; ``raw`` non-blank, without its line break)."""
    found = _Found(n)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        found.add(None, ProblemCode.INVALID_ENCODING, f"not UTF-8 (byte {e.start + 1})")
        return CheckedLine(tuple(found.problems))
    try:
        obj = loads_strict(text, limits.max_depth)
    except BadJSON as e:
        found.add(None, ProblemCode.INVALID_JSON, str(e))
        return CheckedLine(tuple(found.problems))
    if not isinstance(obj, dict):
        found.add(None, ProblemCode.INVALID_JSON, f"expected an object, found {_kind(obj)}")
        return CheckedLine(tuple(found.problems))
    custom_id = _custom_id(found, obj, limits)
    _method(found, obj)
    url = _url(found, obj, limits)
    model, body = _body(found, obj, limits)
    # (each None came with a problem)
    if found.problems or custom_id is None or url is None or model is None or body is None:
        return CheckedLine(tuple(found.problems), custom_id)
    template = RequestTemplate(custom_id=custom_id, model=model, body=body, path=url)
    return CheckedLine((), custom_id, template)


class _Found:
    """The problems of line ``n`` so far."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.problems: list[LineProblem] = []

    def add(self, param: str | None, code: ProblemCode, message: str) -> None:
        self.problems.append(LineProblem.at(self.n, param, code, message))


def _kind(value: Any) -> str:
    kinds = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    return kinds.get(type(value), "a number")


def _string(found: _Found, obj: dict[str, Any], key: str, param: str) -> str | None:
    """``obj[key]`` when it is a storable string, else a problem and ``None``."""
    if key not in obj:
        found.add(param, ProblemCode.INVALID_REQUEST, f"{param} is missing")
        return None
    value = obj[key]
    if not isinstance(value, str):
        found.add(
            param, ProblemCode.INVALID_REQUEST, f"{param} must be a string, found {_kind(value)}"
        )
        return None
    if not storable(value):
        message = f"{param} contains NUL or an unpaired surrogate"
        found.add(param, ProblemCode.INVALID_ENCODING, message)
        return None
    return value


def _custom_id(found: _Found, obj: dict[str, Any], limits: JsonlLimits) -> str | None:
    custom_id = _string(found, obj, "custom_id", "custom_id")
    if custom_id is None:
        return None
    limit = limits.max_custom_id
    if not 1 <= len(custom_id) <= limit:
        message = f"custom_id must have 1 to {limit} characters, found {len(custom_id)}"
        found.add("custom_id", ProblemCode.INVALID_REQUEST, message)
        return None
    return custom_id


def _method(found: _Found, obj: dict[str, Any]) -> None:
    method = _string(found, obj, "method", "method")
    if method is not None and method != "POST":
        found.add(
            "method", ProblemCode.INVALID_REQUEST, f"method must be 'POST', found {show(method)}"
        )


def _url(found: _Found, obj: dict[str, Any], limits: JsonlLimits) -> str | None:
    url = _string(found, obj, "url", "url")
    if url is None:
        return None
    required = limits.required_url
    if required is not None and url != required:
        message = f"url {show(url)} does not match the batch endpoint {show(required)}"
        found.add("url", ProblemCode.MISMATCHED_ENDPOINT, message)
        return None
    if url not in limits.allowed_endpoints:
        allowed = ", ".join(limits.allowed_endpoints)
        message = f"url {show(url)} is not an allowed endpoint ({allowed})"
        found.add("url", ProblemCode.INVALID_REQUEST, message)
        return None
    return url


def _body(found: _Found, obj: dict[str, Any], limits: JsonlLimits) -> tuple[str | None, str | None]:
    """The model and the body text, each ``None`` after a problem."""
    if "body" not in obj:
        found.add("body", ProblemCode.INVALID_REQUEST, "body is missing")
        return None, None
    body = obj["body"]
    if not isinstance(body, dict):
        found.add(
            "body", ProblemCode.INVALID_REQUEST, f"body must be an object, found {_kind(body)}"
        )
        return None, None
    model = _string(found, body, "model", "body.model")
    limit = limits.max_model_chars
    if model is not None and not 1 <= len(model) <= limit:
        message = f"body.model must have 1 to {limit} characters, found {len(model)}"
        found.add("body.model", ProblemCode.INVALID_REQUEST, message)
        model = None
    return model, dumps_compact(body)
