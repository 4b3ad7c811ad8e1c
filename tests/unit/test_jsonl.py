from __future__ import annotations

import io
import json
import sys
from collections.abc import Callable, Iterable
from typing import Any
from uuid import UUID

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fusillade.core.jsonl import (
    LIMIT_CODES,
    JsonlLimits,
    JsonlValidator,
    LineProblem,
    LineSplitter,
    OversizedLine,
    ProblemCode,
    Readable,
    iter_validated,
    validate_file,
)
from fusillade.core.models import FailureReason, RequestTemplate
from fusillade.core.results import (
    ERROR_CODES,
    format_error_line,
    format_input_line,
    format_output_line,
)
from fusillade.errors import InvalidJSONL, ValidationError

RID = UUID("00112233445566778899aabbccddeeff")
CHAT = "/v1/chat/completions"


def obj(custom_id: object = "a", **changes: object) -> dict[str, Any]:
    line: dict[str, Any] = {
        "custom_id": custom_id,
        "method": "POST",
        "url": CHAT,
        "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
    }
    line.update(changes)
    return line


def enc(value: object) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode()


def file_of(*lines: bytes | dict[str, Any]) -> bytes:
    return b"".join((enc(x) if isinstance(x, dict) else x) + b"\n" for x in lines)


def validate_lines(
    lines: Iterable[bytes | OversizedLine], limits: JsonlLimits | None = None
) -> list[RequestTemplate]:
    """Whole lines through ``feed_line``, as a caller that splits lines itself would."""
    validator = JsonlValidator(limits)
    out = []
    for line in lines:
        template = validator.feed_line(line)
        if template is not None:
            out.append(template)
        if validator.done:
            break
    out.extend(validator.finish())
    return out


def validate_stream(
    stream: Readable, limits: JsonlLimits | None = None, *, chunk_size: int = 64 * 1024
) -> list[RequestTemplate]:
    return list(iter_validated(stream, limits, chunk_size=chunk_size))


def only_problem_lines(lines: list[bytes], limits: JsonlLimits) -> LineProblem:
    with pytest.raises(InvalidJSONL) as info:
        validate_lines(lines, limits)
    [problem] = info.value.problems
    assert isinstance(problem, LineProblem)
    return problem


def problems(data: bytes, limits: JsonlLimits | None = None) -> tuple[LineProblem, ...]:
    with pytest.raises(InvalidJSONL) as info:
        validate_stream(io.BytesIO(data), limits)
    return info.value.problems


def only_problem(data: bytes, limits: JsonlLimits | None = None) -> LineProblem:
    found = problems(data, limits)
    assert len(found) == 1, found
    return found[0]


# --- accepted input -----------------------------------------------------------------


def test_valid_file_gives_templates_in_order() -> None:
    data = file_of(obj("a"), obj("b", url="/v1/embeddings", body={"model": "e", "input": "x"}))
    templates = validate_stream(io.BytesIO(data))
    assert templates == [
        RequestTemplate(
            custom_id="a",
            model="m",
            body='{"model":"m","messages":[{"role":"user","content":"hi"}]}',
            path=CHAT,
            method="POST",
        ),
        RequestTemplate(
            custom_id="b", model="e", body='{"model":"e","input":"x"}', path="/v1/embeddings"
        ),
    ]


def test_body_is_compact_and_keeps_unicode() -> None:
    line = b'{"custom_id":"a","method":"POST","url":"/v1/chat/completions",\t'
    line += b'"body": {"model" : "m", "x": "\\u00e9\xc3\xa9", "n": 1.50, '
    line += b'"big": 123456789012345678901234567890}}'
    [t] = validate_lines([line])
    assert t.body == '{"model":"m","x":"éé","n":1.5,"big":123456789012345678901234567890}'


def test_body_with_unpaired_surrogate_escape_stays_escaped() -> None:
    [t] = validate_lines([raw(body=b'{"model":"m","x":"\\udc00 \xc3\xa9"}')])
    assert t.body == '{"model":"m","x":"\\udc00 \\u00e9"}'
    t.body.encode("utf-8")
    assert json.loads(t.body)["x"] == "\udc00 é"


def test_bom_crlf_trailing_blanks_and_extra_keys() -> None:
    data = (
        b"\xef\xbb\xbf" + enc(obj("a", extra=[1, 2])) + b"\r\n" + enc(obj("b")) + b"\r\n\r\n \n\t\n"
    )
    assert [t.custom_id for t in validate_stream(io.BytesIO(data))] == ["a", "b"]


def test_last_line_without_newline() -> None:
    data = enc(obj("a")) + b"\n" + enc(obj("b"))
    assert [t.custom_id for t in validate_stream(io.BytesIO(data), chunk_size=7)] == ["a", "b"]


def test_limits_at_their_edges_are_accepted() -> None:
    deep: Any = {"model": "m"}
    for _ in range(62):  # the line object, the body and 62 more levels: depth 64
        deep = {"model": "m", "x": deep}
    lines = [obj("x" * 512), obj("b", body={"model": "m" * 256}), obj("c", body=deep)]
    assert len(validate_stream(io.BytesIO(file_of(*lines)))) == 3


class StrictValidator(JsonlValidator):
    """The checks without the orjson fast path: what every line the fast path declines
    gets, and the only source of problems."""

    _fast_path = False


def run_validator(
    validator: type[JsonlValidator], data: bytes, limits: JsonlLimits | None = None
) -> list[RequestTemplate] | tuple[LineProblem, ...]:
    v = validator(limits)
    try:
        return v.feed(data) + v.finish()
    except InvalidJSONL as e:
        return e.problems


def nested(depth: int, *, siblings: bool) -> dict[str, Any]:
    """A line nested exactly ``depth`` deep (the line object is level 1, its body 2).

    With ``siblings`` each level also holds an empty array, so the line has more brackets
    than levels and the depth is really walked, not bounded by counting brackets.
    """
    inner: dict[str, Any] = {"model": "m"}
    for _ in range(depth - 2):
        inner = {"model": "m", "x": inner} | ({"s": []} if siblings else {})
    return obj("deep", body=inner)


VALIDATORS = pytest.mark.parametrize("validator", [JsonlValidator, StrictValidator])


@VALIDATORS
@pytest.mark.parametrize("siblings", [False, True])
def test_nesting_exactly_at_the_limit(validator: type[JsonlValidator], siblings: bool) -> None:
    limits = JsonlLimits(max_depth=8)
    [template] = run_validator(validator, file_of(nested(8, siblings=siblings)), limits)
    assert isinstance(template, RequestTemplate)
    [problem] = run_validator(validator, file_of(nested(9, siblings=siblings)), limits)
    assert problem == LineProblem(
        1, None, ProblemCode.INVALID_JSON, "line 1: nesting is deeper than 8"
    )


@VALIDATORS
def test_custom_id_and_model_exactly_at_their_limits(validator: type[JsonlValidator]) -> None:
    at_limit = file_of(obj("x" * 512), obj("b", body={"model": "m" * 256}), obj("é" * 512))
    templates = run_validator(validator, at_limit)
    assert all(isinstance(t, RequestTemplate) for t in templates)
    assert [getattr(t, "custom_id", None) for t in templates] == ["x" * 512, "b", "é" * 512]
    [problem] = run_validator(validator, file_of(obj("x" * 513)))
    assert problem.message == "line 1: custom_id must have 1 to 512 characters, found 513"
    [problem] = run_validator(validator, file_of(obj("b", body={"model": "m" * 257})))
    assert problem.message == "line 1: body.model must have 1 to 256 characters, found 257"


@VALIDATORS
def test_each_line_keeps_its_url(validator: type[JsonlValidator]) -> None:
    data = file_of(obj("a", url="/v1/embeddings"), obj("b"))
    templates = run_validator(validator, data)
    assert [getattr(t, "path", None) for t in templates] == ["/v1/embeddings", CHAT]


@VALIDATORS
def test_nested_arrays_count_towards_the_depth(validator: type[JsonlValidator]) -> None:
    def line(depth: int) -> bytes:  # the line object and its body are two levels
        return raw(body=b'{"model":"m","x":' + b"[" * (depth - 2) + b"]" * (depth - 2) + b"}")

    limits = JsonlLimits(max_depth=8)
    assert len(run_validator(validator, file_of(line(8)), limits)) == 1
    [problem] = run_validator(validator, file_of(line(9)), limits)
    assert problem.message == "line 1: nesting is deeper than 8"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b'{"a":1,"b":2,"b":3}', "line 1: duplicate key 'b'"),
        (b'{"a":' + b"1" * 40 + b"e999}", "line 1: number '" + "1" * 32 + "...' is out of range"),
        (
            enc(obj(url="/x")),
            "line 1: url '/x' is not an allowed endpoint (/v1/embeddings, /v1/responses)",
        ),
    ],
)
def test_problem_messages_name_the_culprit(line: bytes, message: str) -> None:
    limits = JsonlLimits(allowed_endpoints=("/v1/embeddings", "/v1/responses"))
    [problem] = run_validator(StrictValidator, file_of(line), limits)
    assert problem.message == message


@VALIDATORS
def test_a_bom_only_on_the_first_line(validator: type[JsonlValidator]) -> None:
    bom = b"\xef\xbb\xbf"
    [template] = run_validator(validator, bom + file_of(obj("a")))
    assert isinstance(template, RequestTemplate)
    [problem] = run_validator(validator, file_of(obj("a")) + bom + file_of(obj("b")))
    assert problem == LineProblem(
        2, None, ProblemCode.INVALID_JSON, "line 2: invalid JSON: Expecting value (column 1)"
    )


@VALIDATORS
def test_line_bytes_exactly_at_the_limit(validator: type[JsonlValidator]) -> None:
    line = enc(obj("a"))
    limits = JsonlLimits(max_line_bytes=len(line))
    for end in (b"\n", b"\r\n"):
        assert len(run_validator(validator, line + end, limits)) == 1
    [problem] = run_validator(validator, b" " + line + b"\n", limits)
    assert problem.code is ProblemCode.LINE_TOO_LONG
    for end in (b"\n", b"\r\n"):  # feed_line takes the line with its break
        assert validator(limits).feed_line(line + end) is not None


def test_required_url_accepts_matching_lines() -> None:
    limits = JsonlLimits(required_url="/v1/embeddings")
    line = obj(url="/v1/embeddings", body={"model": "e", "input": "x"})
    assert validate_stream(io.BytesIO(file_of(line)), limits)[0].path == "/v1/embeddings"


# --- one example per rule: each names its line and field -----------------------------


def without(key: str) -> bytes:
    return enc({k: v for k, v in obj().items() if k != key})


def raw(custom_id: bytes = b"b", body: bytes = b'{"model":"m"}') -> bytes:
    return b'{"custom_id":"%s","method":"POST","url":"%s","body":%s}' % (
        custom_id,
        CHAT.encode(),
        body,
    )


# Python refuses integers longer than this (0 = no limit, set by PYTHONINTMAXSTRDIGITS).
DIGITS = sys.get_int_max_str_digits()

RULES = [
    # (line, param, code, message prefix)
    (b"\xff{}", None, "invalid_encoding", "line 2: not UTF-8 (byte 1)"),
    (b"{", None, "invalid_json", "line 2: invalid JSON: Expecting property name"),
    (b"{}{}", None, "invalid_json", "line 2: invalid JSON: Extra data"),
    (b"\x0c", None, "invalid_json", "line 2: invalid JSON"),  # not JSON whitespace
    (b"XX", None, "invalid_json", "line 2: invalid JSON"),
    (b"[1]", None, "invalid_json", "line 2: expected an object, found an array"),
    (b'"x"', None, "invalid_json", "line 2: expected an object, found a string"),
    (b"\x00", None, "invalid_json", "line 2: invalid JSON"),
    (b'{"a":NaN}', None, "invalid_json", "line 2: NaN is not valid JSON"),
    (b'{"a":-Infinity}', None, "invalid_json", "line 2: -Infinity is not valid JSON"),
    (b'{"a":1e999}', None, "invalid_json", "line 2: number '1e999' is out of range"),
    *(
        [(b'{"a":' + b"9" * (DIGITS + 1) + b"}", None, "invalid_json", "line 2: an integer has")]
        if DIGITS
        else []
    ),
    (b'{"a":1,"a":2}', None, "invalid_json", "line 2: duplicate key 'a'"),
    (raw(body=b'{"model":"m","x":{"y":1,"y":2}}'), None, "invalid_json", "line 2: duplicate key"),
    (without("custom_id"), "custom_id", "invalid_request", "line 2: custom_id is missing"),
    (enc(obj(7)), "custom_id", "invalid_request", "line 2: custom_id must be a string, found a"),
    (enc(obj(None)), "custom_id", "invalid_request", "line 2: custom_id must be a string, found n"),
    (enc(obj("")), "custom_id", "invalid_request", "line 2: custom_id must have 1 to 512 charac"),
    (enc(obj("x" * 513)), "custom_id", "invalid_request", "line 2: custom_id must have 1 to 512"),
    (enc(obj("a\x00b")), "custom_id", "invalid_encoding", "line 2: custom_id contains NUL"),
    (raw(b"\\ud800"), "custom_id", "invalid_encoding", "line 2: custom_id contains NUL or an"),
    (enc(obj(method="GET")), "method", "invalid_request", "line 2: method must be 'POST', found"),
    (enc(obj(method="post")), "method", "invalid_request", "line 2: method must be 'POST'"),
    (enc(obj(method=1)), "method", "invalid_request", "line 2: method must be a string"),
    (without("method"), "method", "invalid_request", "line 2: method is missing"),
    (enc(obj(url="/v1/images/generations")), "url", "invalid_request", "line 2: url '/v1/imag"),
    (enc(obj(url="https://x/v1/chat/completions")), "url", "invalid_request", "line 2: url 'h"),
    (enc(obj(url=[CHAT])), "url", "invalid_request", "line 2: url must be a string, found an a"),
    (without("url"), "url", "invalid_request", "line 2: url is missing"),
    (without("body"), "body", "invalid_request", "line 2: body is missing"),
    (enc(obj(body="{}")), "body", "invalid_request", "line 2: body must be an object, found a s"),
    (enc(obj(body={})), "body.model", "invalid_request", "line 2: body.model is missing"),
    (enc(obj(body={"model": 4})), "body.model", "invalid_request", "line 2: body.model must be a"),
    (enc(obj(body={"model": ""})), "body.model", "invalid_request", "line 2: body.model must ha"),
    (enc(obj(body={"model": "m" * 257})), "body.model", "invalid_request", "line 2: body.mod"),
]


@pytest.mark.parametrize(
    ("value", "kind"),
    [({}, "an object"), ([], "an array"), (True, "a boolean"), (1.5, "a number"), (None, "null")],
)
def test_wrong_types_are_named(value: object, kind: str) -> None:
    problem = only_problem(file_of(obj(value)))
    assert problem.message == f"line 1: custom_id must be a string, found {kind}"


@pytest.mark.parametrize(("line", "param", "code", "message"), RULES)
def test_each_rule_names_line_and_field(
    line: bytes, param: str | None, code: str, message: str
) -> None:
    problem = only_problem(file_of(obj("first"), line))
    assert problem.line == 2
    assert problem.param == param
    assert problem.code == code
    assert problem.message.startswith(message)


@pytest.mark.parametrize(
    ("custom_id", "shown"), [("x" * 64, "'" + "x" * 64 + "'"), ("y" * 65, "'" + "y" * 64 + "...'")]
)
def test_values_in_messages_are_cut_after_64_characters(custom_id: str, shown: str) -> None:
    problem = only_problem(file_of(obj(custom_id), obj(custom_id)))
    assert problem.message == f"line 2: custom_id {shown} is a duplicate of line 1"


def test_duplicate_custom_id_names_the_first_line() -> None:
    data = file_of(obj("a"), obj("b"), obj("c"), obj("d"), obj("e"), obj("f"), obj("a"))
    problem = only_problem(data)
    assert problem == LineProblem(
        7,
        "custom_id",
        ProblemCode.DUPLICATE_CUSTOM_ID,
        "line 7: custom_id 'a' is a duplicate of line 1",
    )


def test_long_custom_ids_are_compared_exactly_enough() -> None:
    long_a, long_b = "x" * 100 + "a", "x" * 100 + "b"
    assert len(validate_lines([enc(obj(long_a)), enc(obj(long_b))])) == 2
    with pytest.raises(InvalidJSONL) as info:
        validate_lines([enc(obj(long_a)), enc(obj(long_b)), enc(obj(long_a))])
    assert info.value.problems[0].message.startswith("line 3: custom_id 'xxxx")
    assert info.value.problems[0].message.endswith("...' is a duplicate of line 1")


def test_custom_ids_differing_only_in_unicode_form_are_distinct() -> None:
    assert len(validate_lines([enc(obj("\u00e9")), enc(obj("e\u0301"))])) == 2


def test_required_url_mismatch() -> None:
    limits = JsonlLimits(required_url="/v1/embeddings")
    problem = only_problem(file_of(obj("a")), limits)
    assert problem.code is ProblemCode.MISMATCHED_ENDPOINT
    assert problem.param == "url"
    assert problem.message == (
        "line 1: url '/v1/chat/completions' does not match the batch endpoint '/v1/embeddings'"
    )


def test_several_problems_on_one_line_are_all_reported() -> None:
    found = problems(file_of({"custom_id": 1, "method": "GET", "body": []}))
    assert [(p.line, p.param) for p in found] == [
        (1, "custom_id"),
        (1, "method"),
        (1, "url"),
        (1, "body"),
    ]


def test_nesting_over_the_limit() -> None:
    deep: Any = {"model": "m"}
    for _ in range(63):
        deep = {"model": "m", "x": deep}
    problem = only_problem(file_of(obj(body=deep)))
    assert problem.message == "line 1: nesting is deeper than 64"


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    assert len(validate_lines([enc(obj(body={"model": "m", "x": "[{" * 1000}))])) == 1


@pytest.mark.parametrize("depth", [1_000, 100_000])
def test_very_deep_nesting_is_a_problem_not_a_crash(depth: int) -> None:
    line = b'{"custom_id":"a","body":' + b"[" * depth + b"]" * depth + b"}"
    problem = only_problem(file_of(line))
    assert problem.code is ProblemCode.INVALID_JSON
    assert "nesting" in problem.message


# --- blank lines, empty files, limits -----------------------------------------------


def test_blank_line_in_the_middle_is_reported_once_per_run() -> None:
    data = file_of(obj("a"), b"", b"  ", obj("b"), b"\t", obj("c"), b"", b"")
    found = problems(data)
    assert [(p.line, p.code) for p in found] == [(2, "blank_line"), (5, "blank_line")]
    assert found[0].message == "line 2: blank line before the end of the file"


@pytest.mark.parametrize("data", [b"", b"\n", b"\n\n \r\n", b"\xef\xbb\xbf", b"\xef\xbb\xbf\n"])
def test_empty_file(data: bytes) -> None:
    problem = only_problem(data)
    assert problem == LineProblem(None, None, ProblemCode.EMPTY_FILE, "file has no request lines")


def test_empty_line_list() -> None:
    with pytest.raises(InvalidJSONL, match="file has no request lines"):
        validate_lines([])


def test_problems_are_capped_and_the_cap_is_reported() -> None:
    validator = JsonlValidator(JsonlLimits(max_problems=3))
    for _ in range(10):
        validator.feed_line(b"nope")
    assert validator.done
    with pytest.raises(InvalidJSONL) as info:
        validator.finish()
    assert [p.line for p in info.value.problems] == [1, 2, 3]
    assert info.value.truncated
    assert str(info.value).endswith("(and 2+ more problems)")
    assert validator.request_count == 4  # stopped at the first unlisted problem


def test_exactly_the_cap_is_not_truncated() -> None:
    with pytest.raises(InvalidJSONL) as info:
        validate_lines([b"nope"] * 3, JsonlLimits(max_problems=3))
    assert len(info.value.problems) == 3
    assert not info.value.truncated


def test_too_many_lines_stops_reading() -> None:
    validator = JsonlValidator(JsonlLimits(max_lines=2))
    data = file_of(obj("a"), obj("b"), obj("c"), obj("d"))
    validator.feed(data)
    assert validator.done
    with pytest.raises(InvalidJSONL) as info:
        validator.finish()
    [problem] = info.value.problems
    assert problem == LineProblem(
        3, None, ProblemCode.TOO_MANY_LINES, "line 3: file has more than 2 requests"
    )
    assert problem.code in LIMIT_CODES


def test_input_after_the_verdict_is_ignored() -> None:
    validator = JsonlValidator(JsonlLimits(max_lines=1))
    assert len(validator.feed(file_of(obj("a"), obj("b")))) == 1  # "a" was fine when read
    assert validator.done
    assert validator.feed(file_of(obj("c"))) == []
    assert validator.feed_line(enc(obj("d"))) is None
    assert [p.code for p in validator.problems] == [ProblemCode.TOO_MANY_LINES]


def test_nothing_is_taken_after_finish() -> None:
    validator = JsonlValidator()
    assert validator.feed(file_of(obj("a"))) != []
    assert not validator.done
    validator.finish()
    assert validator.done
    assert validator.feed(file_of(obj("b"))) == []
    assert validator.request_count == 1


def test_default_limits() -> None:
    limits = JsonlLimits()
    assert limits.max_file_bytes == 200 * 1024 * 1024  # OpenAI's batch input limit
    assert limits.max_line_bytes == 8 * 1024 * 1024
    assert (limits.max_lines, limits.max_custom_id, limits.max_problems) == (50_000, 512, 20)
    assert limits.allowed_endpoints == (
        "/v1/chat/completions",
        "/v1/embeddings",
        "/v1/completions",
        "/v1/responses",
        "/v1/moderations",
    )
    assert limits.required_url is None


def test_limits_can_be_lifted() -> None:
    data = file_of(*(obj(f"id{i}") for i in range(60_001)))
    limits = JsonlLimits(max_lines=None, max_file_bytes=None)
    first = validate_file(io.BytesIO(data), limits)
    assert first.custom_id == "id0"
    with pytest.raises(InvalidJSONL, match="more than 50000 requests"):
        validate_file(io.BytesIO(data))


class CountingReader(io.BytesIO):
    """A stream that remembers the sizes it was asked for."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.sizes: list[int | None] = []

    def read(self, size: int | None = -1, /) -> bytes:
        self.sizes.append(size)
        return super().read(size)


@pytest.mark.parametrize("validate", [validate_stream, validate_file])
def test_streams_are_read_in_chunks_of_the_given_size(validate: Callable[..., object]) -> None:
    reader = CountingReader(file_of(obj("a"), obj("b")))
    validate(reader, chunk_size=16)
    assert set(reader.sizes) == {16}


def test_an_oversized_line_past_the_line_limit_names_its_line() -> None:
    data = file_of(obj("a")) + b"x" * 300 + b"\n"
    problem = only_problem(data, JsonlLimits(max_lines=1, max_line_bytes=200))
    assert problem == LineProblem(
        2, None, ProblemCode.TOO_MANY_LINES, "line 2: file has more than 1 requests"
    )


def test_validate_file_raises_like_the_others() -> None:
    with pytest.raises(InvalidJSONL, match="file has no request lines"):
        validate_file(io.BytesIO(b"\n"))
    with pytest.raises(InvalidJSONL, match="line 2: custom_id 'a' is a duplicate of line 1"):
        validate_file(io.BytesIO(file_of(obj("a"), obj("a"))))


def test_blank_lines_do_not_count_towards_max_lines() -> None:
    data = file_of(obj("a"), obj("b")) + b"\n\n\n"
    assert len(validate_stream(io.BytesIO(data), JsonlLimits(max_lines=2))) == 2


def test_file_too_large() -> None:
    data = file_of(obj("a"), obj("b"))
    limits = JsonlLimits(max_file_bytes=len(data) - 1)
    problem = only_problem(data, limits)
    assert problem == LineProblem(
        None, None, ProblemCode.FILE_TOO_LARGE, f"file is larger than {len(data) - 1} bytes"
    )
    # The bytes add up across chunks.
    with pytest.raises(InvalidJSONL, match="file is larger than"):
        validate_stream(io.BytesIO(data), limits, chunk_size=7)
    assert problem.code in LIMIT_CODES
    assert len(validate_stream(io.BytesIO(data), JsonlLimits(max_file_bytes=len(data)))) == 2


def test_line_too_long_through_the_splitter() -> None:
    long_line = enc(obj("b", body={"model": "m", "x": "y" * 500}))
    data = file_of(obj("a"), long_line, obj("c"), b"junk")
    found = problems(data, JsonlLimits(max_line_bytes=200))
    assert [(p.line, p.code) for p in found] == [(2, "line_too_long"), (4, "invalid_json")]
    assert found[0].message == "line 2: line is longer than 200 bytes"


def test_line_too_long_through_feed_line() -> None:
    problem = only_problem_lines([enc(obj("a")) + b" " * 300], JsonlLimits(max_line_bytes=200))
    assert problem == LineProblem(
        1, None, ProblemCode.LINE_TOO_LONG, "line 1: line is longer than 200 bytes"
    )


def test_line_limit_excludes_the_line_break() -> None:
    line = enc(obj("a"))
    limits = JsonlLimits(max_line_bytes=len(line))
    assert len(validate_stream(io.BytesIO(line + b"\r\n"), limits)) == 1
    assert len(validate_stream(io.BytesIO(line + b"\n"), limits)) == 1
    assert only_problem(b" " + line + b"\r\n", limits).code is ProblemCode.LINE_TOO_LONG


def test_no_templates_once_the_file_has_a_problem() -> None:
    validator = JsonlValidator()
    assert validator.feed_line(enc(obj("a"))) is not None
    assert validator.feed_line(b"bad") is None
    assert validator.feed_line(enc(obj("c"))) is None
    assert validator.request_count == 3
    with pytest.raises(InvalidJSONL):
        validator.finish()


def test_invalid_jsonl_is_a_validation_error_with_param() -> None:
    with pytest.raises(ValidationError) as info:
        validate_lines([enc(obj(method="GET"))])
    assert info.value.param == "method"
    assert info.value.message == "line 1: method must be 'POST', found 'GET'"


# --- splitting in bounded memory -----------------------------------------------------


class CountingStream:
    def __init__(self, prefix: bytes, filler: int) -> None:
        self.data = io.BytesIO(prefix + b"x" * filler + b"\n" + enc(obj("z")) + b"\n")
        self.read_bytes = 0

    def read(self, size: int, /) -> bytes:
        chunk = self.data.read(size)
        self.read_bytes += len(chunk)
        return chunk


def test_oversized_line_is_reported_before_it_is_read_whole() -> None:
    stream = CountingStream(enc(obj("a")) + b"\n", filler=10_000_000)
    splitter = LineSplitter(max_line_bytes=1000)
    lines = (
        line for chunk in iter(lambda: stream.read(4096), b"") for line in splitter.feed(chunk)
    )
    assert isinstance(next(lines), bytes)
    assert isinstance(next(lines), OversizedLine)
    assert stream.read_bytes < 10_000  # only the first chunks were read
    rest = list(lines)
    assert len(rest) == 1
    assert isinstance(rest[0], bytes)
    assert json.loads(rest[0])["custom_id"] == "z"


def test_iter_validated_yields_while_reading_and_raises_at_the_end() -> None:
    stream = CountingStream(file_of(*(obj(f"id{i}") for i in range(100))), filler=10)
    templates = iter_validated(stream, chunk_size=256)
    assert next(templates).custom_id == "id0"
    assert stream.read_bytes <= 256  # the rest is not read yet
    with pytest.raises(InvalidJSONL) as info:
        list(templates)
    [problem] = info.value.problems
    assert problem.line == 101  # the filler line "xxxxxxxxxx"
    assert problem.code is ProblemCode.INVALID_JSON


def test_iter_validated_stops_reading_once_the_verdict_is_known() -> None:
    stream = CountingStream(b"bad\n" * 3, filler=10_000_000)
    limits = JsonlLimits(max_problems=2)
    with pytest.raises(InvalidJSONL) as info:
        list(iter_validated(stream, limits, chunk_size=4096))
    assert info.value.truncated
    assert stream.read_bytes == 4096


def test_splitter_holds_at_most_one_line() -> None:
    splitter = LineSplitter(max_line_bytes=10)
    assert splitter.feed(b"0123456789\r") == []
    assert splitter.feed(b"\nab") == [b"0123456789\r"]
    assert splitter.feed(b"cdefghijk") == []  # 11 bytes: may still end in "\r\n"
    assert splitter.feed(b"l") == [OversizedLine()]
    assert splitter.feed(b"more and more") == []
    assert splitter.feed(b"end\nlast") == []
    assert splitter.close() == [b"last"]


def test_splitter_limit_excludes_a_crlf_line_break() -> None:
    splitter = LineSplitter(max_line_bytes=3)
    assert splitter.feed(b"abc\r\nabcd\r\nx\n") == [b"abc\r", OversizedLine(), b"x"]


def test_splitter_final_newline_is_not_a_line() -> None:
    splitter = LineSplitter(max_line_bytes=10)
    assert splitter.feed(b"a\n\nb\n") == [b"a", b"", b"b"]
    assert splitter.close() == []


def test_skipped_line_ending_at_the_start_of_a_chunk() -> None:
    splitter = LineSplitter(max_line_bytes=3)
    assert splitter.feed(b"abcdef") == [OversizedLine()]
    assert splitter.feed(b"\nxy\n") == [b"xy"]


def test_oversized_last_line_without_newline() -> None:
    splitter = LineSplitter(max_line_bytes=3)
    assert splitter.feed(b"abcd") == []
    assert splitter.close() == [OversizedLine()]


@settings(max_examples=100, deadline=None)
@given(cuts=st.lists(st.integers(0, 10_000), max_size=20), crlf=st.booleans())
def test_chunk_boundaries_do_not_matter(cuts: list[int], crlf: bool) -> None:
    eol = b"\r\n" if crlf else b"\n"
    data = eol.join(enc(obj(f"id{i}", body={"model": "m", "é": "ü" * i})) for i in range(30))
    expected = validate_lines(data.split(b"\n"))
    validator = JsonlValidator()
    got = []
    points = sorted({c % (len(data) + 1) for c in cuts})
    for start, end in zip([0, *points], [*points, len(data)], strict=True):
        got += validator.feed(data[start:end])
    got += validator.finish()
    assert got == expected
    assert len(got) == 30


# --- never anything but InvalidJSONL on arbitrary input ------------------------------

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)
near_valid = st.fixed_dictionaries(
    {},
    optional={
        "custom_id": st.sampled_from(["a", "b", "", "a\nb"]) | json_values,
        "method": st.sampled_from(["POST", "GET"]) | json_values,
        "url": st.sampled_from([CHAT, "/v1/embeddings", "/x"]) | json_values,
        "body": st.fixed_dictionaries(
            {}, optional={"model": st.sampled_from(["m", ""]) | json_values}
        )
        | json_values,
        "extra": json_values,
    },
)
finite_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
valid_line = st.builds(
    lambda custom_id, extra, crlf: (
        enc(obj(custom_id, body={"model": "m", "x": extra})) + (b"\r" if crlf else b"")
    ),
    st.text(min_size=1, max_size=12),
    finite_values,
    st.booleans(),
)
line_bytes = (
    valid_line
    | st.binary(max_size=64)
    | near_valid.map(lambda o: json.dumps(o).encode())
    | json_values.map(lambda o: json.dumps(o).encode())
    | st.sampled_from([b"", b"\r", b"\xef\xbb\xbf{}", b"[" * 3000, b'{"a":1e400}', b"NaN"])
)


def _accepted(templates: list[RequestTemplate]) -> None:
    assert templates
    ids = [t.custom_id for t in templates]
    assert len(set(ids)) == len(ids)
    for t in templates:
        body = json.loads(t.body)
        assert isinstance(body, dict)
        assert body["model"] == t.model
        t.custom_id.encode("utf-8")
        t.body.encode("utf-8")
    # Re-created input lines validate back to the same templates.
    assert validate_lines(format_input_line(t).encode() for t in templates) == templates


def _outcome(run: Callable[[], list[RequestTemplate]]) -> list[RequestTemplate] | InvalidJSONL:
    """What validation gave: the templates, or the InvalidJSONL it raised (nothing else)."""
    try:
        return run()
    except InvalidJSONL as e:
        return e


def _rejected(error: InvalidJSONL, line_count: int) -> None:
    assert error.problems
    assert all(isinstance(p, LineProblem) for p in error.problems)
    numbered = [p.line for p in error.problems if p.line is not None]
    assert numbered == sorted(numbered)
    assert all(1 <= n <= line_count for n in numbered)
    for p in error.problems:
        if p.line is not None:
            assert p.message.startswith(f"line {p.line}: ")


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=512), limit=st.integers(1, 200))
def test_arbitrary_bytes_only_raise_invalid_jsonl(data: bytes, limit: int) -> None:
    limits = JsonlLimits(max_line_bytes=limit, max_problems=3)
    result = _outcome(lambda: validate_stream(io.BytesIO(data), limits, chunk_size=7))
    if isinstance(result, InvalidJSONL):
        _rejected(result, data.count(b"\n") + 1)
    else:
        _accepted(result)


@settings(max_examples=300, deadline=None)
@given(lines=st.lists(line_bytes, max_size=12) | st.lists(valid_line), max_lines=st.integers(1, 15))
def test_arbitrary_lines_only_raise_invalid_jsonl(lines: list[bytes], max_lines: int) -> None:
    limits = JsonlLimits(max_lines=max_lines, max_line_bytes=2000, max_depth=8)
    result = _outcome(lambda: validate_lines(lines, limits))
    if isinstance(result, InvalidJSONL):
        _rejected(result, len(lines))
    else:
        _accepted(result)


# --- result lines --------------------------------------------------------------------

NASTY_IDS = [
    "plain",
    "line\nbreak\r\nand\rcr",
    'quote " and \\ backslash',
    "'; DROP TABLE requests; --",
    "ünïcödé ✓ 🚀 \u2028\u2029",
    "\t\x01\x1f control",
    "x" * 512,
]


@pytest.mark.parametrize("custom_id", NASTY_IDS)
def test_custom_id_round_trips_through_every_format(custom_id: str) -> None:
    lines = [
        format_output_line(RID, custom_id, 200, '{"ok":true}'),
        format_error_line(RID, custom_id, FailureReason.TIMEOUT, "timed out"),
        format_error_line(RID, custom_id, FailureReason.HTTP_STATUS, "bad", 400, "{}"),
        format_input_line(RequestTemplate(custom_id, "m", '{"model":"m"}')),
    ]
    for line in lines:
        assert "\n" not in line
        assert "\r" not in line
        assert json.loads(line.encode("utf-8"))["custom_id"] == custom_id
    # ensure_ascii=False: the text is kept as is, not escaped
    if custom_id.isprintable():
        assert json.dumps(custom_id, ensure_ascii=False) in lines[0]


def test_output_line_shape() -> None:
    body = '{\n  "id": "chatcmpl-1",\n  "choices": [{"message": {"content": "hi"}}]\n}'
    line = format_output_line(RID, "a", 200, body)
    assert line == (
        '{"id":"batch_req_00112233445566778899aabbccddeeff","custom_id":"a",'
        '"response":{"status_code":200,"request_id":"00112233-4455-6677-8899-aabbccddeeff",'
        '"body":{"id":"chatcmpl-1","choices":[{"message":{"content":"hi"}}]}},"error":null}'
    )


def test_output_line_with_upstream_request_id_and_non_json_body() -> None:
    line = json.loads(format_output_line(RID, "a", 200, "not json", upstream_request_id="req_9"))
    assert line["response"] == {"status_code": 200, "request_id": "req_9", "body": "not json"}
    assert json.loads(format_output_line(RID, "a", 200, None))["response"]["body"] is None
    assert json.loads(format_output_line(RID, "a", 200, "NaN"))["response"]["body"] == "NaN"


def test_output_line_keeps_unpaired_surrogates_escaped() -> None:
    line = format_output_line(RID, "a", 200, '{"x":"\\ud800 é"}')
    line.encode("utf-8")
    assert json.loads(line)["response"]["body"] == {"x": "\ud800 é"}


def test_http_failure_keeps_response_and_no_error() -> None:
    body = '{"error":{"message":"bad","type":"invalid_request_error","param":null,"code":null}}'
    line = json.loads(format_error_line(RID, "a", FailureReason.HTTP_STATUS, "HTTP 400", 400, body))
    assert line == {
        "id": "batch_req_00112233445566778899aabbccddeeff",
        "custom_id": "a",
        "response": {"status_code": 400, "request_id": str(RID), "body": json.loads(body)},
        "error": None,
    }


def test_http_failure_keeps_the_upstream_request_id() -> None:
    line = format_error_line(
        RID, "a", FailureReason.HTTP_STATUS, "HTTP 500", 500, "oops", upstream_request_id="req_9"
    )
    assert json.loads(line)["response"] == {
        "status_code": 500,
        "request_id": "req_9",
        "body": "oops",
    }


@pytest.mark.parametrize(
    ("reason", "code"),
    [
        (FailureReason.TIMEOUT, "request_timeout"),
        (FailureReason.CONNECT, "connection_error"),
        (FailureReason.BUILDER, "invalid_request"),
        (FailureReason.CANCELLED, "batch_cancelled"),
        (FailureReason.EXPIRED, "batch_expired"),
        (FailureReason.LOST, "request_lost"),
        (FailureReason.HTTP_STATUS, "upstream_error"),  # no status known
    ],
)
def test_non_http_failure_has_error_and_no_response(reason: FailureReason, code: str) -> None:
    line = json.loads(format_error_line(RID, "a", reason, "why", None, None))
    assert line == {
        "id": "batch_req_00112233445566778899aabbccddeeff",
        "custom_id": "a",
        "response": None,
        "error": {"code": code, "message": "why"},
    }


def test_every_failure_reason_has_an_error_code() -> None:
    assert set(ERROR_CODES) == set(FailureReason)


def test_input_line_round_trip() -> None:
    template = RequestTemplate("a\nb", "m", '{"model":"m","x":[1,2.5,"é"]}', path="/v1/embeddings")
    line = format_input_line(template)
    assert line == (
        '{"custom_id":"a\\nb","method":"POST","url":"/v1/embeddings",'
        '"body":{"model":"m","x":[1,2.5,"é"]}}'
    )
    assert validate_lines([line.encode()]) == [template]


@settings(max_examples=200, deadline=None)
@given(
    custom_id=st.text(min_size=1),
    status=st.integers(100, 599),
    body=st.text() | json_values.map(json.dumps),
    reason=st.sampled_from(FailureReason),
)
def test_result_lines_are_one_valid_utf8_json_line(
    custom_id: str, status: int, body: str, reason: FailureReason
) -> None:
    for line in (
        format_output_line(RID, custom_id, status, body),
        format_error_line(RID, custom_id, reason, body, status, body),
    ):
        assert "\n" not in line
        parsed = json.loads(line.encode("utf-8"))
        assert parsed["custom_id"] == custom_id
        assert parsed["id"] == "batch_req_" + RID.hex
        if parsed["response"] is not None:
            try:
                expected = json.loads(body)
            except ValueError:
                expected = body
            if expected == expected:  # NaN never equals itself; it is embedded as text
                assert parsed["response"]["body"] in (expected, body)


@given(st.text())
def test_result_lines_survive_splitlines(text: str) -> None:
    """Readers split downloads with str.splitlines(): no line may contain a break it sees."""
    line = format_output_line(RID, text, 200, json.dumps({"content": text}))
    assert len(line.splitlines()) == 1
    assert json.loads(line)["custom_id"] == text
