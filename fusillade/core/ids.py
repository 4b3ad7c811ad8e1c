"""Public ids: a kind prefix plus the uuid as 32 lowercase hex digits.

``file-<hex>``, ``batch_<hex>``, ``batch_req_<hex>`` and ``evt_<hex>`` (a webhook event),
as OpenAI spells them. Each uuid
has exactly one public spelling (lowercase, no hyphens), so ids round-trip byte for byte
and can serve as list cursors.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final, Literal
from uuid import UUID

IdKind = Literal["file", "batch", "request", "event"]

PREFIXES: Final[Mapping[IdKind, str]] = MappingProxyType(
    {"file": "file-", "batch": "batch_", "request": "batch_req_", "event": "evt_"}
)

_HEX_DIGITS = frozenset("0123456789abcdef")


def format_id(kind: IdKind, value: UUID) -> str:
    """The public id of ``value``: ``format_id("batch", u) == "batch_" + u.hex``."""
    return PREFIXES[kind] + value.hex


def parse_id(kind: IdKind, text: str) -> UUID | None:
    """The uuid behind a public id of ``kind``, or ``None`` when ``text`` is not one.

    Only the exact spelling ``format_id`` produces is accepted (no uppercase, hyphens or
    braces), so a malformed id reads as "no such object" (a 404), never as an error.
    ``parse_id("batch", "batch_req_...")`` is ``None``: the prefixes do not overlap once
    the 32 digits are required.
    """
    prefix = PREFIXES[kind]
    if not text.startswith(prefix):
        return None
    digits = text[len(prefix) :]
    # UUID(hex=...) alone would also accept hyphens, braces, "urn:uuid:" and uppercase.
    if len(digits) != 32 or not _HEX_DIGITS.issuperset(digits):
        return None
    return UUID(hex=digits)
