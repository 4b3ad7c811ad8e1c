"""The fast path (orjson) of input validation agrees with the strict path exactly."""

from __future__ import annotations

import io
import json
import random
import struct
from collections.abc import Callable

import orjson
import pytest
from hypothesis import event, example, given, settings
from hypothesis import strategies as st

from fusillade.core.fastline import _divergent, _read, fast_templates
from fusillade.core.jsonl import JsonlLimits, JsonlValidator, iter_validated
from fusillade.core.models import RequestTemplate
from fusillade.core.strictjson import ENCODER, dumps_compact
from fusillade.errors import InvalidJSONL

CHAT = "/v1/chat/completions"


class StrictValidator(JsonlValidator):
    _fast_path = False


def outcome(
    validator: Callable[[JsonlLimits], JsonlValidator], data: bytes, limits: JsonlLimits
) -> list[RequestTemplate] | tuple[object, ...]:
    """The templates, or those given before the InvalidJSONL raised and its problems."""
    v = validator(limits)
    got: list[RequestTemplate] = []
    try:
        for start in range(0, len(data), 97):  # odd chunks: lines cross chunk edges
            got += v.feed(data[start : start + 97])
        got += v.finish()
    except InvalidJSONL as e:
        return (got, e.problems, e.truncated)
    return got


# --- JSON text with what the fast path must notice ----------------------------------

# Keys from a small set, so duplicates are frequent; some hold colons or escapes.
keys = st.sampled_from(["a", "b", "model", "a:b", ":", "x\\u003ay", "\\u0061"]).map(
    lambda k: f'"{k}"'
)
# fmt: off
NUMBER_SPELLINGS = [
    "0", "-0", "-0.0", "1.5", "1e5", "1E5", "1e-05", "0.00001", "0.0001", "2.5e-7", "1e-10",
    "1e16", "1e+16", "1e22", "1E400", "-1e400", "1e-400", "123456789.125", "3.0", "100",
    "9223372036854775807", "9223372036854775808", "18446744073709551615", "0.1", "5e-324",
    "18446744073709551616", "-9223372036854775809", "123456789012345678901234567890",
    "1.7976931348623157e308",
]
STRING_SPELLINGS = [
    '"x:y"', '":"', '"\\u003a"', '"\\u003A"', '"\\u0000"', '"\\ud800"', '"\\udc00x"',
    '"\\ud83d\\ude00"', '"\u2028\u2029\x85"', '"\\\\u003a"', '"e-5 0.0000 1e+5"', '"{["',
    '"\\"\\\\\\/\\b\\f\\n\\r\\t"', '"\x7f"', '"\u00e9"',
]
# fmt: on
numbers = (
    st.sampled_from(NUMBER_SPELLINGS)
    | st.integers().map(str)
    | st.floats(allow_nan=False, allow_infinity=False).map(repr)
)
strings = st.text(max_size=6).map(lambda s: json.dumps(s)) | st.sampled_from(STRING_SPELLINGS)
scalars = numbers | strings | st.sampled_from(["true", "false", "null"] * 3 + ["NaN", "Infinity"])
spaces = st.sampled_from(["", "", " ", "\t", " \r "])


def _object(pairs: list[tuple[str, str, str]]) -> str:
    return "{" + ",".join(f"{k}{s}:{s}{v}" for k, v, s in pairs) + "}"


def pairs(
    inner: st.SearchStrategy[str], most: int
) -> st.SearchStrategy[list[tuple[str, str, str]]]:
    """Key, value and spacing of an object's members; keys repeat half of the time."""
    member = st.tuples(keys, inner, spaces)
    unique = st.lists(member, max_size=most, unique_by=lambda m: m[0].replace("\\u0061", "a"))
    return unique | st.lists(member, max_size=most)


values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3).map(lambda xs: "[" + ",".join(xs) + "]")
        | pairs(inner, 3).map(_object)
    ),
    max_leaves=5,
)
custom_ids = st.text(min_size=1, max_size=40).map(json.dumps) | st.sampled_from(
    ['"a"', '"b"', '"a:b"', '""', '"\\u0000"', '"\\u003a"', "1"]
)


@st.composite
def lines(draw: st.DrawFn) -> bytes:
    """A line close to valid, with every feature the fast path must get right."""
    # Mostly valid fields, so that the rest of the line decides.
    model = st.sampled_from(['"m"', '"m:1"']) | st.sampled_from(['""', '"\\u0000"', "1"])
    body = [("model", draw(model), ""), ("n", draw(numbers), "")]
    body += [(k[1:-1], v, s) for k, v, s in draw(pairs(values, 3))]
    top = [
        ("custom_id", draw(custom_ids), ""),
        ("method", draw(st.sampled_from(['"POST"'] * 3 + ['"GET"'])), ""),
        ("url", draw(st.sampled_from([f'"{CHAT}"'] * 3 + ['"/v1/embeddings"', '"/x"'])), ""),
        ("body", _object([(f'"{k}"', v, s) for k, v, s in draw(st.permutations(body))]), ""),
    ]
    top += [(k[1:-1], v, s) for k, v, s in draw(pairs(values, 2))]
    if draw(st.integers(0, 7)) == 0:  # a duplicate at the top level
        top.append(draw(st.sampled_from(top)))
    text = _object([(f'"{k}"', v, s) for k, v, s in draw(st.permutations(top))])
    return (draw(spaces) + text + draw(spaces)).encode("utf-8", "surrogatepass")


@settings(max_examples=300, deadline=None)
@given(
    data=st.lists(lines(), min_size=1, max_size=4).map(lambda xs: b"\n".join(xs) + b"\n"),
    max_depth=st.integers(2, 8),
    required=st.sampled_from([None, CHAT]),
)
def test_fast_path_gives_what_the_strict_path_gives(
    data: bytes, max_depth: int, required: str | None
) -> None:
    limits = JsonlLimits(max_depth=max_depth, required_url=required, max_problems=5)
    strict = outcome(StrictValidator, data, limits)
    event("accepted" if isinstance(strict, list) else "rejected")
    assert outcome(JsonlValidator, data, limits) == strict


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300))
def test_fast_path_agrees_on_arbitrary_bytes(data: bytes) -> None:
    limits = JsonlLimits(max_line_bytes=100, max_problems=3)
    assert outcome(JsonlValidator, data, limits) == outcome(StrictValidator, data, limits)


finite_bodies = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    # not tiny nor huge: those are the strict path's (see test_what_only_the_strict_path...)
    | st.floats(min_value=-1e15, max_value=1e15).filter(lambda x: x == 0 or abs(x) >= 1e-4)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(extra=finite_bodies, custom_id=st.text(min_size=1, max_size=20))
# Strings whose JSON spelling reads like a number's exponent: "\u000e-" is the escape of
# U+000E followed by "-" ("0e-" to a byte scan), "0e+" is just text.
@example(extra="\x0e-", custom_id="a")
@example(extra={"k": "\x1e+"}, custom_id="b")
@example(extra=["0e+5", "x0.00001"], custom_id="c")
def test_ordinary_lines_take_the_fast_path(extra: object, custom_id: str) -> None:
    line = {"custom_id": custom_id, "method": "POST", "url": CHAT}
    line["body"] = {"model": "m", "x": extra}
    raw = json.dumps(line, ensure_ascii=False).encode()
    if "\x00" in custom_id or b"\\u0000" in raw:
        return  # NUL is for the strict path to refuse
    expected = RequestTemplate(custom_id, "m", dumps_compact(line["body"]), CHAT)
    [template] = fast_templates([raw], JsonlLimits())
    if _divergent(orjson.dumps(line["body"])):
        # The number checks scan bytes and cannot tell a string from a number, so text
        # that looks like an exponent or a tiny decimal sends the line to the strict path
        # (by design: such strings are rare, and scanning only numbers would cost every
        # line). Not a wrong answer: the validator still gives the same template.
        assert template in (None, expected)
    else:
        assert template == expected
    validator = JsonlValidator()
    assert validator.feed(raw + b"\n") + validator.finish() == [expected]


COLON_LINES = [
    b'{"custom_id":"a:b","method":"POST","url":"/v1/chat/completions",'
    b'"body":{"model":"m:1","t":"x:y"}}',
    b'{"custom_id":"c","method":"POST","url":"/v1/chat/completions","body":{"model":"m"},'
    b'"meta":{"k:1":"v:2","n":[1,{"a":":"}]}}',
    b'{"meta":"::","custom_id":"d:","method":"POST","url":"/v1/chat/completions",'
    b'"body":{"model":"m"}}',
]


def test_colons_in_ids_bodies_and_extra_keys_take_the_fast_path() -> None:
    """Colons are counted to find duplicate keys; ordinary ones must not send a line to
    the strict path, alone (checked line by line) or in a batch (checked at once)."""
    limits = JsonlLimits()
    for raw in COLON_LINES:
        assert fast_templates([raw], limits)[0] is not None
        # next to a line with a duplicate key, the batch check fails: line by line
        duplicate = raw[:-1] + b',"body":{"model":"m"}}'
        assert fast_templates([raw, duplicate], limits)[0] is not None
    assert None not in fast_templates(COLON_LINES, limits)
    passed = _read(COLON_LINES, limits)
    # Without duplicate keys, the parsed values hold every colon of the text.
    assert [passed.colons(k) for k in range(3)] == [raw.count(b":") for raw in COLON_LINES]
    assert passed.all_colons() == sum(raw.count(b":") for raw in COLON_LINES)


def test_the_benchmark_line_takes_the_fast_path() -> None:
    raw = (
        b'{"custom_id":"req-00000001","method":"POST","url":"/v1/chat/completions",'
        b'"body":{"model":"bench-model","messages":[{"role":"user","content":"Say hello"}],'
        b'"max_tokens":16}}'
    )
    assert fast_templates([raw, None, b"{}"], JsonlLimits())[0] is not None


@pytest.mark.parametrize(
    "raw",
    [
        b'{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{"model":"m"},'
        b'"custom_id":"b"}',
        b'{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{"model":"m",'
        b'"x":{"k":1,"k":2}}}',
        # the duplicate's colon is made up for by an escaped one: counts alone would match
        b'{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{"model":"m",'
        b'"k":1,"k":"\\u003a"}}',
        b'{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{"model":"m",'
        b'"n":123456789012345678901234567890}}',
        b'{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{"model":"m",'
        b'"t":0.00001}}',
        b'{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{"model":"m",'
        b'"s":"\\ud800"}}',
        b'{"custom_id":"a\\u0000","method":"POST","url":"/v1/chat/completions",'
        b'"body":{"model":"m"}}',
        b'{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{"model":"m",'
        b'"d":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}}',
    ],
)
def test_what_only_the_strict_path_decides(raw: bytes) -> None:
    assert fast_templates([raw], JsonlLimits()) == [None]
    # ... and a batch with one such line still gives the others.
    good = b'{"custom_id":"z","method":"POST","url":"/v1/chat/completions","body":{"model":"m"}}'
    assert fast_templates([good, raw, good], JsonlLimits())[1] is None
    assert fast_templates([good, raw, good], JsonlLimits())[0] is not None


# --- the number spelling the fast path relies on -------------------------------------


def _agrees_or_flagged(value: float | int) -> None:
    fast = orjson.dumps(value)
    assert fast == ENCODER.encode(value).encode() or _divergent(fast), (value, fast)


def test_orjson_spells_floats_as_repr_unless_flagged() -> None:
    rng = random.Random(20261126)
    for _ in range(200_000):
        (value,) = struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))
        if value == value and abs(value) != float("inf"):
            _agrees_or_flagged(value)
    for exponent in range(-330, 310):
        for mantissa in ("1", "1.5", "2.5", "9.999999999999999", "1.2345678901234567", "7"):
            value = float(f"{mantissa}e{exponent}")
            if abs(value) != float("inf"):
                _agrees_or_flagged(value)
                _agrees_or_flagged(-value)


@pytest.mark.parametrize(
    "text", ["9223372036854775808", "18446744073709551616", "-9223372036854775809", "9" * 40]
)
def test_integers_orjson_reads_as_floats_are_flagged(text: str) -> None:
    value = orjson.loads(text)
    if isinstance(value, float):
        assert _divergent(orjson.dumps({"n": value}))
    else:
        assert orjson.dumps(value) == text.encode()


def test_validation_results_do_not_depend_on_the_path() -> None:
    data = b"".join(
        json.dumps(
            {"custom_id": f"id{i}", "method": "POST", "url": CHAT, "body": {"model": "m", "i": i}}
        ).encode()
        + b"\n"
        for i in range(3000)
    )
    limits = JsonlLimits()
    fast = list(iter_validated(io.BytesIO(data), limits))
    assert fast == outcome(StrictValidator, data, limits)


def chunked_outcome(
    validator: Callable[[JsonlLimits], JsonlValidator],
    data: bytes,
    limits: JsonlLimits,
    size: int,
) -> list[RequestTemplate] | tuple[object, ...]:
    v = validator(limits)
    got: list[RequestTemplate] = []
    try:
        for start in range(0, len(data), size):
            got += v.feed(data[start : start + size])
        got += v.finish()
    except InvalidJSONL as e:
        return (got, e.problems, e.truncated)
    return got


def valid_line(custom_id: str) -> bytes:
    line = {"custom_id": custom_id, "method": "POST", "url": CHAT, "body": {"model": "m"}}
    return json.dumps(line).encode()


@settings(max_examples=200, deadline=None)
@given(
    ids=st.lists(st.sampled_from(["a", "b", "c", "d" * 33, "e" * 40, "f:g"]), max_size=30),
    blanks=st.sets(st.integers(0, 30), max_size=3),
    bom=st.booleans(),
    crlf=st.booleans(),
    max_lines=st.integers(1, 35),
    size=st.integers(1, 4000),
)
def test_whole_batches_count_like_single_lines(
    ids: list[str], blanks: set[int], bom: bool, crlf: bool, max_lines: int, size: int
) -> None:
    """Batches of valid lines are taken at once (duplicates, blank lines, the line limit
    and long ids leave them to the line-by-line path): the outcome is the same."""
    lines = [b"" if i in blanks else valid_line(f"{c}{i % 3}") for i, c in enumerate(ids)]
    end = b"\r\n" if crlf else b"\n"
    data = (b"\xef\xbb\xbf" if bom else b"") + b"".join(line + end for line in lines)
    limits = JsonlLimits(max_lines=max_lines, max_problems=4)
    expected = chunked_outcome(StrictValidator, data, limits, size)
    assert chunked_outcome(JsonlValidator, data, limits, size) == expected


@pytest.mark.parametrize(
    ("ids", "max_lines"),
    [
        (["a", "b", "c", "d", "b", "e"], None),  # the duplicate in a later batch
        (["a", "b", "c", "a", "d", "e"], None),  # ... and in the same batch
        (["a", "b", "c", "d", "", "e"], None),  # a blank line pending
        (["a", "b", "c", "d", "e", "f"], 4),  # the line limit inside a batch
        (["a", "b", "c", "x" * 40, "y" * 40, "x" * 40], None),  # long ids, digested
    ],
)
def test_batches_at_their_edges(ids: list[str], max_lines: int | None) -> None:
    lines = [valid_line(i) if i else b"" for i in ids]
    data = b"".join(line + b"\n" for line in lines)
    limits = JsonlLimits(max_lines=max_lines)
    for size in (len(lines[0]) + 1, 3 * (len(lines[0]) + 1), len(data)):
        expected = chunked_outcome(StrictValidator, data, limits, size)
        assert chunked_outcome(JsonlValidator, data, limits, size) == expected
