from __future__ import annotations

from uuid import UUID

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fusillade.core.ids import PREFIXES, IdKind, format_id, parse_id

U = UUID("0123456789abcdef0123456789abcdef")
KINDS: tuple[IdKind, ...] = ("file", "batch", "request")


@pytest.mark.parametrize(
    ("kind", "text"),
    [
        ("file", "file-0123456789abcdef0123456789abcdef"),
        ("batch", "batch_0123456789abcdef0123456789abcdef"),
        ("request", "batch_req_0123456789abcdef0123456789abcdef"),
    ],
)
def test_format_and_parse(kind: IdKind, text: str) -> None:
    assert format_id(kind, U) == text
    assert parse_id(kind, text) == U


@given(kind=st.sampled_from(KINDS), value=st.uuids())
def test_round_trip(kind: IdKind, value: UUID) -> None:
    assert parse_id(kind, format_id(kind, value)) == value


@pytest.mark.parametrize(
    ("kind", "text"),
    [
        ("batch", "batch_0123456789ABCDEF0123456789ABCDEF"),  # one spelling only
        ("batch", "batch_01234567-89ab-cdef-0123-456789abcdef"),
        ("batch", "batch_{0123456789abcdef0123456789abcdef}"),
        ("batch", "batch_0123456789abcdef0123456789abcde"),
        ("batch", "batch_0123456789abcdef0123456789abcdef0"),
        ("batch", "batch_0123456789abcdef0123456789abcdeg"),
        ("batch", "0123456789abcdef0123456789abcdef"),
        ("batch", "file-0123456789abcdef0123456789abcdef"),
        ("batch", "batch_req_0123456789abcdef0123456789abcdef"),
        ("request", "batch_0123456789abcdef0123456789abcdef"),
        ("file", "file_0123456789abcdef0123456789abcdef"),
        ("file", ""),
        ("file", "file-"),
        ("file", "file-" + "\u0660" * 10 + "abcdef0123456789abcdef"),  # non-ASCII digits
    ],
)
def test_malformed_ids_are_none(kind: IdKind, text: str) -> None:
    assert parse_id(kind, text) is None


@given(kind=st.sampled_from(KINDS), text=st.text())
def test_parse_never_raises(kind: IdKind, text: str) -> None:
    value = parse_id(kind, text)
    if value is not None:
        assert format_id(kind, value) == text


def test_prefixes_are_openai_spellings() -> None:
    assert dict(PREFIXES) == {
        "file": "file-",
        "batch": "batch_",
        "request": "batch_req_",
        "event": "evt_",
    }
