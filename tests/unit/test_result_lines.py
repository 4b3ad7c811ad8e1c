"""Output lines spliced from stored JSON bodies equal the ones formatted from a parse."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from fusillade.core.models import RequestState
from fusillade.core.results import (
    ResultLine,
    format_output_line,
    format_result_line,
    parse_embeddable,
)
from fusillade.core.strictjson import dumps_compact, storable

RID = uuid.UUID("00112233-4455-6677-8899-aabbccddeeff")

# What PostgreSQL text can hold: no NUL, no unpaired surrogate (custom_ids are validated so).
stored_text = st.text(min_size=1).filter(storable)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(
    custom_id=stored_text,
    body=json_values,
    status=st.integers(100, 599),
    upstream=st.none() | stored_text,
    indent=st.none() | st.integers(0, 3),
)
# The line breaks str.splitlines() sees, in every part the splice writes, every run.
@example("a\u2028b\u2029c\x85d", {"t": "\u2028\u2029\x85"}, 200, None, None)
@example("a", ["\u2028"], 200, "req\u2029\x85", 2)
@example("\u2028", "\u2028", 500, "\u2029", None)
def test_spliced_line_equals_parsed_line(
    custom_id: str, body: object, status: int, upstream: str | None, indent: int | None
) -> None:
    text = json.dumps(body, indent=indent)  # as an upstream might send it
    parsed = parse_embeddable(text)
    assert parsed is not None
    value, canonical = parsed
    assert value == json.loads(text)
    assert canonical == dumps_compact(value)
    spliced = format_output_line(
        RID, custom_id, status, canonical, upstream_request_id=upstream, body_is_json=True
    )
    slow = format_output_line(RID, custom_id, status, text, upstream_request_id=upstream)
    assert spliced == slow
    assert len(spliced.splitlines()) == 1


@pytest.mark.parametrize("upstream", [None, "req\u2029"])
def test_spliced_line_escapes_what_splitlines_splits_on(upstream: str | None) -> None:
    parsed = parse_embeddable('{"t": "x\u2028y"}')
    assert parsed is not None
    _, canonical = parsed
    assert canonical == '{"t":"x\\u2028y"}'
    line = format_output_line(
        RID, "a\u2028b\x85", 200, canonical, upstream_request_id=upstream, body_is_json=True
    )
    assert line.splitlines() == [line]
    for char in ("\u2028", "\u2029", "\x85"):
        assert char not in line
    value = json.loads(line)
    assert value["custom_id"] == "a\u2028b\x85"
    assert value["response"]["body"] == {"t": "x\u2028y"}
    if upstream is not None:
        assert value["response"]["request_id"] == upstream
        assert "\\u2029" in line


@given(st.sampled_from(['{"a":1,"a":2}', "NaN", '{"x":Infinity}', "not json", "", "[1,"]))
def test_bodies_that_are_not_strict_json_are_not_embeddable(text: str) -> None:
    assert parse_embeddable(text) is None


def _completed(body: str, *, body_is_json: bool) -> ResultLine:
    return ResultLine(
        request_id=RID,
        custom_id="a",
        state=RequestState.COMPLETED,
        status=200,
        body=body,
        failure_reason=None,
        failure_message=None,
        finished_at=datetime(2026, 1, 1, tzinfo=UTC),
        body_is_json=body_is_json,
    )


def test_result_line_splices_only_bodies_the_store_marked() -> None:
    # Marked: the stored text is embedded as it is (the daemon stored it compact).
    marked = format_result_line(_completed('{"ok": true}', body_is_json=True))
    assert marked.endswith('"body":{"ok": true}},"error":null}')
    # Not marked (stored before 0003, or lax JSON): parsed and re-serialised.
    unmarked = format_result_line(_completed('{"ok": true}', body_is_json=False))
    assert unmarked.endswith('"body":{"ok":true}},"error":null}')
    assert (
        json.loads(format_result_line(_completed('{"a":1,"a":2}', body_is_json=False)))["response"][
            "body"
        ]
        == '{"a":1,"a":2}'
    )
