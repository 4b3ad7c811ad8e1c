"""The commands' id arguments: the public id, or a bare uuid in any spelling, as the id."""

from __future__ import annotations

from uuid import UUID

from hypothesis import given
from hypothesis import strategies as st

from fusillade.cli.remote import public_id


@given(st.uuids())
def test_a_bare_uuid_reads_as_its_public_id(u: UUID) -> None:
    expected = "batch_" + format(u.int, "032x")
    batch = public_id("batch")
    for spelling in (str(u), str(u).upper(), u.hex, "{" + str(u) + "}", f" {u}\n"):
        assert batch(spelling) == expected
    assert batch(expected) == expected
    assert public_id("file")(str(u)) == "file-" + format(u.int, "032x")


@given(st.text())
def test_anything_else_passes_through_for_the_engine_to_refuse(text: str) -> None:
    try:
        UUID(text.strip())
    except ValueError:
        assert public_id("batch")(text) == text.strip()
