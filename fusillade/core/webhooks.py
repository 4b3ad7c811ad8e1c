"""Webhook events: their payload, their Standard Webhooks signature, when to send them
again, and which addresses they may go to. Pure: ``now``, jitter and addresses are
arguments (docs/webhooks.md).

An event is written to the outbox in the transaction that makes its batch terminal
(the freeze); the runtime (``fusillade.runtime.webhooks``) delivers it at least once.
Its body is rendered from the stored row by ``payload``, byte for byte the same on every
attempt, so a receiver deduplicates by ``webhook-id`` (the event id) or by the body.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import re
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Final, Literal
from uuid import UUID

import attrs

from fusillade.core.ids import format_id
from fusillade.core.models import BatchStatus

EventType = Literal["batch.completed", "batch.failed", "batch.expired", "batch.cancelled"]

EVENT_TYPES: Final[tuple[EventType, ...]] = (
    "batch.completed",
    "batch.failed",
    "batch.expired",
    "batch.cancelled",
)

_TYPE_OF_STATUS: Final[dict[BatchStatus, EventType]] = {
    BatchStatus.COMPLETED: "batch.completed",
    BatchStatus.FAILED: "batch.failed",
    BatchStatus.EXPIRED: "batch.expired",
    BatchStatus.CANCELLED: "batch.cancelled",
}

HORIZON: Final = timedelta(hours=72)
"""How long after its creation an event is still sent (then it is given up)."""


def event_type(status: BatchStatus) -> EventType | None:
    """The event a batch that has just become ``status`` sends; ``None`` when the status
    is not terminal."""
    return _TYPE_OF_STATUS.get(status)


@attrs.frozen
class WebhookEvent:
    """One outbox row as a delivery sees it. ``attempts`` counts the sends started,
    this one included once claimed (the fence of its settle)."""

    id: UUID
    owner: str
    type: str
    batch_id: UUID
    created_at: datetime
    attempts: int = 0


def payload(event: WebhookEvent) -> bytes:
    """The event's body, OpenAI's shape, the same bytes on every attempt::

    {"id":"evt_...","object":"event","type":"batch.completed","created_at":1719168000,
     "data":{"id":"batch_..."}}
    """
    body = {
        "id": format_id("event", event.id),
        "object": "event",
        "type": event.type,
        "created_at": int(event.created_at.timestamp()),
        "data": {"id": format_id("batch", event.batch_id)},
    }
    return json.dumps(body, separators=(",", ":")).encode()


# --- signing (Standard Webhooks, as OpenAI signs) ----------------------------------------


class SecretError(ValueError):
    """A webhook secret that cannot be used (said without the secret itself)."""


_SECRET_SPLIT = re.compile(r"[\s,]+")


def parse_secrets(text: str) -> tuple[bytes, ...]:
    """The signing keys in ``text``: one secret, or several separated by spaces or commas
    (key rotation: every one signs, the receiver accepts any). ``whsec_<base64>`` is
    decoded as Standard Webhooks says; any other text is used as its UTF-8 bytes, as
    OpenAI's SDK does.

    Raises:
        SecretError: no secret, or a ``whsec_`` secret that is not base64.
    """
    keys = []
    for i, token in enumerate(t for t in _SECRET_SPLIT.split(text) if t):
        if token.startswith("whsec_"):
            try:
                key = base64.b64decode(token.removeprefix("whsec_"), validate=True)
            except ValueError:
                raise SecretError(f"secret {i + 1} is not whsec_ followed by base64") from None
        else:
            key = token.encode()
        if not key:
            raise SecretError(f"secret {i + 1} is empty")
        keys.append(key)
    if not keys:
        raise SecretError("no secret")
    return tuple(keys)


def signature(keys: Sequence[bytes], msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header: ``v1,<base64 HMAC-SHA256 of id.timestamp.body>``
    for each key, separated by spaces."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        for key in keys
    )


def signed_headers(
    keys: Sequence[bytes], event: WebhookEvent, timestamp: int, body: bytes
) -> dict[str, str]:
    """The headers of one attempt: ``webhook-id`` (the event id, the same every time),
    ``webhook-timestamp`` (this attempt's, seconds) and ``webhook-signature``."""
    msg_id = format_id("event", event.id)
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(keys, msg_id, timestamp, body),
    }


# --- retries -----------------------------------------------------------------------------


@attrs.frozen
class WebhookPolicy:
    """When a failed send is tried again: ``first`` after the first failure, times
    ``factor`` after each further one, at most ``cap``; each delay scaled by a jitter
    factor in [0.75, 1.25). After ``horizon`` from the event's creation it is given up."""

    first: timedelta = timedelta(seconds=5)
    factor: float = 6.0
    cap: timedelta = timedelta(hours=1)
    horizon: timedelta = HORIZON


def retry_delay(policy: WebhookPolicy, attempts: int, jitter: float) -> timedelta:
    """The pause after the ``attempts``-th failed send (1-based); ``jitter`` in [0, 1)."""
    exponent = max(attempts - 1, 0)
    base = policy.first.total_seconds()
    cap = policy.cap.total_seconds()
    # a huge exponent overflows the float before the cap applies
    seconds = cap if exponent > 64 else min(base * policy.factor**exponent, cap)
    return timedelta(seconds=seconds * (0.75 + 0.5 * min(max(jitter, 0.0), 1.0)))


def next_attempt(
    policy: WebhookPolicy, event: WebhookEvent, now: datetime, jitter: float
) -> datetime | None:
    """When to send ``event`` again after its ``event.attempts``-th send failed at
    ``now``; ``None``: give it up (the next send would be past the horizon)."""
    at = now + retry_delay(policy, event.attempts, jitter)
    return at if at <= event.created_at + policy.horizon else None


# --- where events may go (SSRF) ----------------------------------------------------------

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def address_refusal(address: IPAddress) -> str | None:
    """Why a webhook may not be sent to ``address`` unless the operator allows private
    targets, or ``None`` when it may: loopback, private, link-local, multicast,
    unspecified, reserved and every other non-global range (shared address space,
    documentation ranges...). An IPv4 address inside IPv6 (mapped, 6to4...) is judged as
    the IPv4 address."""
    if isinstance(address, ipaddress.IPv6Address):
        inner = address.ipv4_mapped or address.sixtofour
        if inner is not None:
            return address_refusal(inner)
    for what, hit in (
        ("a loopback", address.is_loopback),
        ("a link-local", address.is_link_local),
        ("a multicast", address.is_multicast),
        ("the unspecified", address.is_unspecified),
        ("a private", address.is_private),
        ("a reserved", address.is_reserved),
        ("not a global", not address.is_global),
    ):
        if hit:
            return f"{address} is {what} address"
    return None
