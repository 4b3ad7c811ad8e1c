"""Upstream bodies are bytes; PostgreSQL ``text`` holds only valid UTF-8 without NUL.

Theory of operation
-------------------
Nearly every body an upstream sends is valid UTF-8 without a NUL byte: it is stored in
``response_body`` (text) exactly as it came, and ``Body.raw`` is ``None``. Any other bytes
(invalid UTF-8, a NUL byte anywhere, binary) keep their exact bytes in ``Body.raw``
(stored in ``response_body_raw``, bytea), and ``Body.text`` is a rendering that text can
hold: the bytes decoded as UTF-8 with each invalid sequence and each NUL replaced by
U+FFFD. Nothing is lost; the rendering is what the retry rules and text readers see.

Result lines (``shown``) give back the exact body wherever JSON can: bytes that are valid
UTF-8 (a NUL included, which a JSON string writes ``\\u0000``) are shown exactly; bytes
that are not UTF-8 are shown as the rendering plus the exact bytes in base64
(docs/semantics.md, "Response bodies").

A JSON body with ``\\u0000`` or a lone-surrogate escape is plain ASCII text: it is stored
as it came. Only a re-serialisation could turn the escape into a character text cannot
hold, and ``strictjson.dumps_compact`` escapes those.
"""

from __future__ import annotations

import re
from typing import Final

import attrs

REPLACEMENT: Final = "\ufffd"
# Code points PostgreSQL text cannot hold: NUL, and UTF-16 surrogates (a Python str can
# hold one alone; it has no UTF-8 form).
_UNSTORABLE: Final = re.compile("[\x00\ud800-\udfff]")


@attrs.frozen
class Body:
    """An upstream body ready to store: ``text`` always; ``raw`` (the exact bytes) only
    when ``text`` is not them."""

    text: str
    raw: bytes | None = attrs.field(default=None, repr=False)

    @property
    def content(self) -> bytes:
        """The exact bytes the upstream sent."""
        return self.raw if self.raw is not None else self.text.encode()


def body_of(content: bytes) -> Body:
    """``content`` as stored: text when it is UTF-8 without NUL, else a rendering and the bytes.

    Example::

        >>> body_of(b'{"a":1}')
        Body(text='{"a":1}')
        >>> body_of(b"bad \\x00 here").text
        'bad \\ufffd here'
    """
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        return Body(content.decode("utf-8", "replace").replace("\x00", REPLACEMENT), content)
    if "\x00" in text:
        return Body(text.replace("\x00", REPLACEMENT), content)
    return Body(text)


def shown(text: str, raw: bytes | None) -> tuple[str, bytes | None]:
    """A stored body as a result line shows it: the exact text when the bytes are UTF-8,
    else the stored rendering and the bytes to add in base64 (``None``: nothing to add)."""
    if raw is None:
        return text, None
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError:
        return text, raw


def storable_text(text: str) -> str:
    """``text`` with every code point that PostgreSQL text cannot hold replaced by U+FFFD."""
    return _UNSTORABLE.sub(REPLACEMENT, text)
