"""Secrets out of printed and logged URLs: ``fusillade config``, error messages, logs.

A URL's userinfo is a credential: ``https://user:PASSWORD@proxy/v1`` for an upstream
behind a proxy, ``https://TOKEN@host`` for a token passed as the user name,
``postgresql://app:PASSWORD@db/fusillade`` for the database. Rules:

- A database URL (``postgres://``, ``postgresql://``) keeps its user name (a role name,
  which an operator needs to read) and loses its password: ``postgresql://app:***@db/f``.
  A ``password=`` parameter (URL query or key/value connection string) becomes ``***``.
- Any other URL loses its whole userinfo: ``https://***@proxy/v1``.

Both err towards masking too much: a password with an ``@`` in it is masked to the
last ``@`` before the host.
"""

from __future__ import annotations

import re
from typing import Final

MASK: Final = "***"

_DATABASE_SCHEMES: Final = frozenset({"postgres", "postgresql"})
_PASSWORD_PARAM = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&]+)", re.IGNORECASE)
# scheme://userinfo@ where userinfo runs to the last "@" before whitespace or a quote:
# "user:p@ss@host" masks "p@ss", "user:pa/ss@host" masks "pa/ss" (an "@" later in a
# path or query masks more than needed, never less).
_USERINFO = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*)://([^\s\"'<>]*)@")


def _masked_userinfo(match: re.Match[str]) -> str:
    scheme, userinfo = match.group(1), match.group(2)
    if scheme.lower() in _DATABASE_SCHEMES:
        user, sep, _ = userinfo.partition(":")
        return f"{scheme}://{user}:{MASK}@" if sep else match.group(0)
    return f"{scheme}://{MASK}@"


def mask_urls(text: str) -> str:
    """``text`` with the credentials of every URL in it masked (the rules above).

    Works on a bare URL, a key/value connection string, or any message quoting URLs.
    """
    text = _PASSWORD_PARAM.sub(rf"\g<1>{MASK}", text)
    return _USERINFO.sub(_masked_userinfo, text)


# Keys as upstreams echo them in error bodies ("Incorrect API key provided: sk-proj-...")
# and bearer credentials: the prefix stays (it says which kind of key), the rest goes.
_API_KEY = re.compile(r"\b((?:sk|rk|pk|key)[-_](?:[A-Za-z]+-)?)[A-Za-z0-9_\-*]{6,}")
_BEARER = re.compile(r"\b(bearer\s+)\S+", re.IGNORECASE)


def mask_secrets(text: str) -> str:
    """``text`` with URL credentials (``mask_urls``), api keys (``sk-...``) and bearer
    tokens masked: for texts an upstream wrote, such as an error body shown in progress."""
    text = _BEARER.sub(rf"\g<1>{MASK}", mask_urls(text))
    return _API_KEY.sub(rf"\g<1>{MASK}", text)
