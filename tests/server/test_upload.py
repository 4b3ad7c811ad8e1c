"""``UploadReceiver`` alone: chunk boundaries never matter, the spool holds the file."""

from __future__ import annotations

import io

import pytest
from hypothesis import given
from hypothesis import strategies as st
from serverkit import chat_line, jsonl

from fusillade.core.jsonl import JsonlLimits, iter_validated
from fusillade.core.models import RequestTemplate
from fusillade.errors import InvalidJSONL, ValidationError
from fusillade.server.spool import TemplateSpool
from fusillade.server.upload import UploadReceiver, boundary_of

BOUNDARY = "----fusillade-test-boundary"
FILE = jsonl(chat_line(f"c{i}", content="x" * i) for i in range(50))


def body(file: bytes, purpose: bytes = b"batch", filename: str = "in.jsonl") -> bytes:
    b = BOUNDARY.encode()
    return (
        b"--" + b + b'\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n' + purpose
        + b"\r\n--" + b + b'\r\nContent-Disposition: form-data; name="file"; filename="'
        + filename.encode() + b'"\r\nContent-Type: application/jsonl\r\n\r\n' + file
        + b"\r\n--" + b + b"--\r\n"
    )  # fmt: skip


def feed_in(
    data: bytes, cuts: list[int], limits: JsonlLimits | None = None, size: int = len(FILE)
) -> list[RequestTemplate]:
    with UploadReceiver(BOUNDARY, limits or JsonlLimits()) as receiver:
        start = 0
        for cut in sorted(cuts):
            receiver.feed(data[start:cut])
            start = cut
        receiver.feed(data[start:])
        received = receiver.finish()
    try:
        assert received.filename == "in.jsonl"
        assert received.purpose == "batch"
        assert received.size == size
        return list(received.spool)
    finally:
        received.spool.close()


EXPECTED = list(iter_validated(io.BytesIO(FILE)))


@given(st.lists(st.integers(min_value=0, max_value=len(body(FILE))), max_size=20))
def test_any_chunking_gives_the_same_file(cuts: list[int]) -> None:
    assert feed_in(body(FILE), cuts) == EXPECTED


def test_one_byte_at_a_time() -> None:
    data = body(FILE)
    assert feed_in(data, list(range(len(data)))) == EXPECTED


def test_a_path_in_the_filename_is_dropped() -> None:
    with UploadReceiver(BOUNDARY, JsonlLimits()) as receiver:
        receiver.feed(body(FILE, filename="C:\\\\Users\\\\me/dir/in.jsonl"))
        received = receiver.finish()
    received.spool.close()
    assert received.filename == "in.jsonl"


def test_too_large_stops_at_once() -> None:
    limits = JsonlLimits(max_file_bytes=1000)
    with UploadReceiver(BOUNDARY, limits) as receiver, pytest.raises(InvalidJSONL) as caught:
        receiver.feed(body(FILE))
    assert caught.value.problems[0].code == "file_too_large"


def test_after_a_rejection_input_is_only_drained() -> None:
    with UploadReceiver(BOUNDARY, JsonlLimits(max_problems=1)) as receiver:
        receiver.feed(body(b"{bad\n{bad\n" + FILE)[:250])
        assert receiver.rejected
        receiver.feed(b"anything at all")  # ignored
        with pytest.raises(InvalidJSONL):
            receiver.finish()


@pytest.mark.parametrize(
    "header",
    ["application/json", "multipart/form-data", "multipart/mixed; boundary=x", None, ""],
)
def test_content_type_must_be_multipart_form_data(header: str | None) -> None:
    with pytest.raises(ValidationError, match="multipart/form-data"):
        boundary_of(header)
    assert boundary_of('multipart/form-data; boundary="a b"') == "a b"


def test_the_last_line_without_a_newline_is_kept() -> None:
    data = body(FILE.rstrip(b"\n"))
    assert feed_in(data, [], size=len(FILE) - 1) == EXPECTED


def test_spool_round_trip_past_its_memory() -> None:
    templates = [
        RequestTemplate(custom_id=f"é{i}\u2028", model="m", body='{"x":"' + "y" * i + '"}')
        for i in range(0, 3000, 7)
    ]
    spool = TemplateSpool(max_memory=1000)
    try:
        spool.write(templates[:10])
        spool.write([])
        spool.write(templates[10:])
        assert list(spool) == templates
        assert spool.count == len(templates)
    finally:
        spool.close()
