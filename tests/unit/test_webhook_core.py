"""The pure parts of webhooks (fusillade.core.webhooks): payload, signature, retries, SSRF."""

from __future__ import annotations

import base64
import ipaddress
import json
import time
from datetime import UTC, datetime, timedelta
from uuid import UUID

import openai
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fusillade.core.models import BatchStatus
from fusillade.core.webhooks import (
    EVENT_TYPES,
    SecretError,
    WebhookEvent,
    WebhookPolicy,
    address_refusal,
    event_type,
    next_attempt,
    parse_secrets,
    payload,
    retry_delay,
    signature,
    signed_headers,
)

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
EVENT = WebhookEvent(
    UUID("0190f2a8-0000-7000-8000-000000000001"),
    "alice",
    "batch.completed",
    UUID("0190f2a8-0000-7000-8000-0000000000b1"),
    T0,
    attempts=1,
)
SECRET = "whsec_" + base64.b64encode(b"a secret of thirty-two bytes!!!!").decode()


def test_payload_is_openais_shape_and_the_same_every_time() -> None:
    body = payload(EVENT)
    assert json.loads(body) == {
        "id": "evt_0190f2a8000070008000000000000001",
        "object": "event",
        "type": "batch.completed",
        "created_at": int(T0.timestamp()),
        "data": {"id": "batch_0190f2a80000700080000000000000b1"},
    }
    assert payload(EVENT) == body


def test_event_types_of_statuses() -> None:
    assert [event_type(s) for s in BatchStatus if event_type(s)] == [
        "batch.failed",
        "batch.completed",
        "batch.expired",
        "batch.cancelled",
    ]
    assert event_type(BatchStatus.IN_PROGRESS) is None
    assert set(EVENT_TYPES) == {event_type(s) for s in BatchStatus} - {None}


def test_the_openai_sdk_verifies_our_signature_and_reads_the_event() -> None:
    now = int(time.time())
    body = payload(EVENT)
    headers = signed_headers(parse_secrets(SECRET), EVENT, now, body)
    client = openai.OpenAI(api_key="x", webhook_secret=SECRET)
    unwrapped = client.webhooks.unwrap(body, headers)
    assert unwrapped.type == "batch.completed"
    assert unwrapped.id == "evt_0190f2a8000070008000000000000001"
    assert unwrapped.data.id == "batch_0190f2a80000700080000000000000b1"
    with pytest.raises(openai.InvalidWebhookSignatureError):
        client.webhooks.unwrap(body.replace(b"completed", b"cancelled"), headers)


def test_rotation_signs_with_every_secret_and_either_verifies() -> None:
    other = "whsec_" + base64.b64encode(b"the next secret").decode()
    keys = parse_secrets(f"{SECRET}, {other}")
    now = int(time.time())
    body = payload(EVENT)
    headers = signed_headers(keys, EVENT, now, body)
    assert len(headers["webhook-signature"].split()) == 2
    for secret in (SECRET, other):
        openai.OpenAI(api_key="x").webhooks.verify_signature(body, headers, secret=secret)


def test_signature_is_standard_webhooks() -> None:
    # the example of the Standard Webhooks specification
    key = parse_secrets("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    body = b'{"test": 2432232314}'
    assert (
        signature(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)
        == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )


@pytest.mark.parametrize("text", ["", " , ", "whsec_not base64!", "whsec_"])
def test_unusable_secrets_are_refused_without_echoing_them(text: str) -> None:
    with pytest.raises(SecretError) as caught:
        parse_secrets(text)
    assert "not base64!" not in str(caught.value)


def test_plain_text_secret_is_its_bytes_as_in_the_sdk() -> None:
    assert parse_secrets("plain") == (b"plain",)


def test_backoff_schedule() -> None:
    policy = WebhookPolicy()
    delays = [retry_delay(policy, n, 0.5).total_seconds() for n in range(1, 8)]
    assert delays == [5, 30, 180, 1080, 3600, 3600, 3600]


@given(attempts=st.integers(0, 10_000), jitter=st.floats(0, 1))
def test_backoff_is_bounded_and_jittered(attempts: int, jitter: float) -> None:
    policy = WebhookPolicy()
    delay = retry_delay(policy, attempts, jitter)
    assert policy.first * 0.75 <= delay <= policy.cap * 1.25


@given(
    attempts=st.integers(1, 200),
    jitter=st.floats(0, 1),
    elapsed=st.integers(0, 80 * 3600),
)
def test_an_event_is_retried_until_the_horizon_then_given_up(
    attempts: int, jitter: float, elapsed: int
) -> None:
    policy = WebhookPolicy()
    event = WebhookEvent(EVENT.id, "a", "batch.completed", EVENT.batch_id, T0, attempts)
    now = T0 + timedelta(seconds=elapsed)
    at = next_attempt(policy, event, now, jitter)
    if at is None:
        assert now + retry_delay(policy, attempts, jitter) > T0 + policy.horizon
    else:
        assert now < at <= T0 + policy.horizon


def test_the_last_attempt_before_the_horizon_is_made() -> None:
    """From the schedule, an event failing every time is sent for about 72 hours."""
    policy = WebhookPolicy()
    now, attempts = T0, 1
    while True:
        event = WebhookEvent(EVENT.id, "a", "batch.completed", EVENT.batch_id, T0, attempts)
        at = next_attempt(policy, event, now, 0.5)
        if at is None:
            break
        now, attempts = at, attempts + 1
    assert T0 + timedelta(hours=71) <= now <= T0 + policy.horizon
    assert 70 < attempts < 80


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("100.64.0.1", "not a global"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:10.0.0.1", "private"),
        ("2002:0a00:0001::1", "private"),  # 6to4 of 10.0.0.1
        ("fc00::1", "private"),
        ("240.0.0.1", "private"),  # reserved: Python counts it private too
    ],
)
def test_private_addresses_are_refused(address: str, kind: str) -> None:
    reason = address_refusal(ipaddress.ip_address(address))
    assert reason is not None and kind in reason


@pytest.mark.parametrize("address", ["93.184.215.14", "8.8.8.8", "2606:4700:4700::1111"])
def test_global_addresses_are_allowed(address: str) -> None:
    assert address_refusal(ipaddress.ip_address(address)) is None
