"""Idempotency keys: which requests are "the same", and for how long a key is remembered.

A create (``POST /v1/files``, ``POST /v1/batches``) may carry a client's key. The store
keeps ``(owner, key) -> (fingerprint, object id, created_at)``, written in the
transaction that creates the object, so a retry (even after a crash between the commit
and the reply) finds the object instead of making a second one. A retry's fingerprint
must equal the stored one; a different request under a used key is a ``Conflict``.
Keys are per owner, and forgotten ``IDEMPOTENCY_TTL`` after their first use.

The fingerprint names what was created (``file:``/``batch:``) and hashes what the
request asked for, so a key used for an upload and then for a batch is a conflict too.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Final
from uuid import UUID

import attrs

from fusillade.core.strictjson import storable
from fusillade.errors import Conflict, ValidationError

IDEMPOTENCY_TTL: Final = timedelta(hours=24)
"""How long a key is remembered after the request that first used it (then: a new key)."""
MAX_KEY_CHARS: Final = 255
HEADER: Final = "Idempotency-Key"


@attrs.frozen
class IdempotencyKey:
    """A client's key and the fingerprint of the request that carries it."""

    key: str
    fingerprint: str


def check_key(key: str) -> str:
    """``key`` when it is usable: 1 to ``MAX_KEY_CHARS`` characters PostgreSQL can store.

    Raises:
        ValidationError: empty, too long, or holding NUL or an unpaired surrogate.
    """
    if not key or len(key) > MAX_KEY_CHARS or not storable(key):
        raise ValidationError(
            f"the {HEADER} header must have 1 to {MAX_KEY_CHARS} characters (got {len(key)})",
            param=HEADER,
        )
    return key


def _digest(kind: str, canonical: object) -> str:
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return f"{kind}:{hashlib.sha256(text.encode()).hexdigest()}"


def batch_fingerprint(
    input_file_id: UUID,
    endpoint: str,
    completion_window: str,
    metadata: Mapping[str, str] | None,
    output_expires_after: timedelta | None = None,
) -> str:
    """The fingerprint of a batch creation: its canonical JSON body, hashed."""
    return _digest(
        "batch",
        {
            "input_file_id": str(input_file_id),
            "endpoint": endpoint,
            "completion_window": completion_window,
            "metadata": dict(metadata) if metadata is not None else None,
            "output_expires_after": _seconds(output_expires_after),
        },
    )


def file_fingerprint(
    purpose: str, filename: str, content_sha256: str, expires_after: timedelta | None = None
) -> str:
    """The fingerprint of an upload: its purpose, file name, content's SHA-256 (hex) and
    expiry."""
    return _digest(
        "file",
        {
            "purpose": purpose,
            "filename": filename,
            "sha256": content_sha256,
            "expires_after": _seconds(expires_after),
        },
    )


def _seconds(lifetime: timedelta | None) -> float | None:
    return None if lifetime is None else lifetime.total_seconds()


def expired_before(now: datetime) -> datetime:
    """Keys first used before this are forgotten: they match nothing."""
    return now - IDEMPOTENCY_TTL


def check_replay(idempotency: IdempotencyKey, stored_fingerprint: str) -> None:
    """A request reusing a remembered key must be the request that first used it.

    Raises:
        Conflict: it is a different request (409).
    """
    if idempotency.fingerprint != stored_fingerprint:
        raise Conflict(
            f"the {HEADER} {idempotency.key[:80]!r} was already used for a different "
            "request; send a new key for a new request"
        )
