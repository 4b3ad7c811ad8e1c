"""What the engine accepts: batch requests, metadata, public ids and list cursors.

Every adapter (the HTTP routes, the command line, ``run``, library callers) reaches these
rules through ``Engine``, so a request refused by one is refused by all, with the same
``ValidationError`` (its message and ``param``) or ``NotFound``. What needs the stored
input file (it exists and is the owner's, is an input file, has lines, every line's url
is the endpoint) is checked by the repository, in the transaction that creates the batch,
with the pure rules of ``fusillade/core/batches.py`` (``check_input_file``,
``endpoint_mismatch``) that both repositories call.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Final
from uuid import UUID

import attrs

from fusillade.core.ids import IdKind, parse_id
from fusillade.core.jsonl import JsonlLimits
from fusillade.core.strictjson import storable
from fusillade.core.windows import parse_completion_window
from fusillade.errors import NotFound, ValidationError
from fusillade.store.interface import BatchSpec

MAX_METADATA_PAIRS: Final = 16
MAX_METADATA_KEY: Final = 64
MAX_METADATA_VALUE: Final = 512
EXPIRES_AFTER_SECONDS: Final = range(3600, 2_592_000 + 1)
"""OpenAI's range of ``expires_after.seconds`` and ``output_expires_after.seconds``."""
MAX_FILE_PAGE: Final = 10_000
"""The largest page of a file listing (OpenAI's)."""
MAX_PAGE: Final = 100
"""The largest page of a batch or request listing (OpenAI's)."""


@attrs.frozen
class Rules:
    """What an engine accepts beyond what every engine does (metadata limits, ids).

    Attributes:
        limits: the limits of an input file read by ``create_file`` (unless the call
            gives its own); a server's upload limits.
        endpoints: the batch endpoints ``create_batch`` accepts; ``None``: any.
        completion_windows: the completion windows ``create_batch`` accepts, as
            spelled; ``None``: any that ``parse_completion_window`` reads.
    """

    limits: JsonlLimits = attrs.field(factory=JsonlLimits)
    endpoints: tuple[str, ...] | None = None
    completion_windows: tuple[str, ...] | None = None


def check_metadata(metadata: Mapping[str, str] | None) -> None:
    """OpenAI's limits: at most 16 pairs, keys up to 64 and values up to 512 characters.

    Raises:
        ValidationError: a limit is exceeded, or a string holds NUL or an unpaired
            surrogate (which PostgreSQL cannot store).
    """
    if metadata is None:
        return
    if len(metadata) > MAX_METADATA_PAIRS:
        raise ValidationError(
            f"metadata has {len(metadata)} pairs; at most {MAX_METADATA_PAIRS} are allowed",
            param="metadata",
        )
    for key, value in metadata.items():
        if len(key) > MAX_METADATA_KEY:
            raise ValidationError(
                f"metadata key {key[:20]!r}... is longer than {MAX_METADATA_KEY} characters",
                param="metadata",
            )
        if len(value) > MAX_METADATA_VALUE:
            raise ValidationError(
                f"metadata value of {key!r} is longer than {MAX_METADATA_VALUE} characters",
                param="metadata",
            )
        if not storable(key) or not storable(value):
            raise ValidationError(
                "metadata keys and values must not contain NUL or unpaired surrogates",
                param="metadata",
            )


def expires_after(value: Mapping[str, object] | None, *, param: str) -> timedelta | None:
    """OpenAI's ``expires_after`` of an upload (form fields ``expires_after[anchor]`` and
    ``expires_after[seconds]``) or ``output_expires_after`` of a batch: ``anchor`` must be
    ``created_at`` and ``seconds`` a whole number in 3600..2592000 (1 hour to 30 days);
    ``None``: not sent.

    Raises:
        ValidationError: with ``param`` naming the part that is wrong.
    """
    if value is None:
        return None
    anchor = value.get("anchor")
    if anchor != "created_at":
        raise ValidationError(
            f"{param}.anchor must be 'created_at', got {str(anchor)[:40]!r}",
            param=f"{param}.anchor",
        )
    seconds = value.get("seconds")
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, int)
        or seconds not in EXPIRES_AFTER_SECONDS
    ):
        raise ValidationError(
            f"{param}.seconds must be a whole number of seconds between 3600 and 2592000, "
            f"got {str(seconds)[:40]!r}",
            param=f"{param}.seconds",
        )
    return timedelta(seconds=seconds)


def batch_spec(
    rules: Rules,
    file_id: UUID | str,
    *,
    endpoint: str,
    completion_window: str,
    metadata: Mapping[str, str] | None,
    batch_id: UUID | None,
) -> BatchSpec:
    """Check a batch request; in this order: endpoint, completion window, metadata, file id.

    Raises:
        ValidationError: endpoint or completion window not accepted, bad metadata.
        NotFound: ``file_id`` is text that is not a file id.
    """
    if rules.endpoints is not None and endpoint not in rules.endpoints:
        allowed = ", ".join(rules.endpoints)
        raise ValidationError(
            f"endpoint {endpoint[:80]!r} is not supported; use one of {allowed}",
            param="endpoint",
        )
    windows = rules.completion_windows
    if windows is not None and completion_window not in windows:
        allowed = ", ".join(repr(w) for w in windows)
        raise ValidationError(
            f"completion_window {completion_window[:40]!r} is not allowed; "
            f"this server accepts {allowed}",
            param="completion_window",
        )
    window = parse_completion_window(completion_window)
    check_metadata(metadata)
    return BatchSpec(
        input_file_id=public_uuid("file", file_id),
        endpoint=endpoint,
        completion_window=completion_window,
        window=window,
        metadata=dict(metadata) if metadata is not None else None,
        batch_id=batch_id,
    )


def public_uuid(kind: IdKind, value: UUID | str) -> UUID:
    """The uuid of an object: ``value`` itself, or behind its public id.

    Raises:
        NotFound: ``value`` is text that is not an id of ``kind`` (a malformed id is
            simply not found).
    """
    if isinstance(value, UUID):
        return value
    parsed = parse_id(kind, value)
    if parsed is None:
        raise NotFound(kind, value)
    return parsed


def cursor_uuid(kind: IdKind, after: UUID | str | None) -> UUID | None:
    """The uuid of a list cursor (an id the listing returned).

    Raises:
        ValidationError: ``after`` is text that is not an id of ``kind``.
    """
    if after is None or isinstance(after, UUID):
        return after
    value = parse_id(kind, after)
    if value is None:
        raise ValidationError(f"after: {after[:80]!r} is not a {kind} id", param="after")
    return value
