"""Upstream bodies as stored and shown (fusillade/core/bodies.py, docs/semantics.md)."""

from __future__ import annotations

import base64
import json
import uuid

from hypothesis import given
from hypothesis import strategies as st

from fusillade.core.bodies import body_of, shown, storable_text
from fusillade.core.models import FailureReason
from fusillade.core.results import format_error_line, format_output_line
from fusillade.core.strictjson import storable

RID = uuid.UUID("00112233-4455-6677-8899-aabbccddeeff")


@given(st.binary())
def test_any_bytes_store_as_text_postgres_can_hold_and_come_back_exactly(content: bytes) -> None:
    body = body_of(content)
    assert storable(body.text)
    assert body.content == content
    text, lossy = shown(body.text, body.raw)
    assert (lossy or text.encode()) == content


@given(st.text().filter(lambda t: "\x00" not in t and storable(t)))
def test_text_the_database_can_hold_is_stored_as_it_came(text: str) -> None:
    body = body_of(text.encode())
    assert body.text == text and body.raw is None


def test_a_nul_byte_is_rendered_as_the_replacement_character_and_kept_exactly() -> None:
    body = body_of(b"bad \x00 here")
    assert (body.text, body.raw) == ("bad \ufffd here", b"bad \x00 here")
    assert shown(body.text, body.raw) == ("bad \x00 here", None)  # JSON can write it


def test_bytes_that_are_not_utf8_are_shown_as_their_rendering_and_base64() -> None:
    body = body_of(b'{"m":"caf\xe9"}')
    assert body.text == '{"m":"caf\ufffd"}'
    line = json.loads(
        format_error_line(
            RID, "c", FailureReason.HTTP_STATUS, "x", 400, body.text, body_raw=body.raw
        )
    )
    assert line["response"]["body"] == {"m": "caf\ufffd"}
    assert base64.b64decode(line["response"]["body_base64"]) == b'{"m":"caf\xe9"}'


def test_an_output_line_with_raw_bytes_is_never_spliced() -> None:
    body = body_of(b'{"ok":"\xff"}')
    line = format_output_line(RID, "c", 200, body.text, body_is_json=True, body_raw=body.raw)
    assert (
        json.loads(line)["response"]["body_base64"] == base64.b64encode(b'{"ok":"\xff"}').decode()
    )


def test_lines_without_raw_bytes_have_no_base64() -> None:
    line = json.loads(format_output_line(RID, "c", 200, '{"a":"\\u0000"}'))
    assert line["response"] == {"status_code": 200, "request_id": str(RID), "body": {"a": "\x00"}}


def test_storable_text_replaces_nul_and_lone_surrogates() -> None:
    assert storable_text("a\x00b\ud800c\U0001f600") == "a\ufffdb\ufffdc\U0001f600"
