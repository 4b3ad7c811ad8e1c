"""The pure rules of idempotency keys: key limits, fingerprints, replays."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID

import pytest

from fusillade.core.idempotency import (
    IDEMPOTENCY_TTL,
    IdempotencyKey,
    batch_fingerprint,
    check_key,
    check_replay,
    expired_before,
    file_fingerprint,
)
from fusillade.errors import Conflict, ValidationError

FILE = UUID(int=1)


@pytest.mark.parametrize("key", ["k", "k" * 255, "é" * 255, "a b:c/d"])
def test_usable_keys(key: str) -> None:
    assert check_key(key) == key


@pytest.mark.parametrize("key", ["", "k" * 256, "a\x00b", "\ud800"])
def test_unusable_keys(key: str) -> None:
    with pytest.raises(ValidationError) as caught:
        check_key(key)
    assert caught.value.param == "Idempotency-Key"


def test_a_batch_fingerprint_is_its_canonical_body() -> None:
    one = batch_fingerprint(FILE, "/v1/embeddings", "24h", {"a": "1", "b": "2"})
    assert one == batch_fingerprint(FILE, "/v1/embeddings", "24h", {"b": "2", "a": "1"})
    assert one.startswith("batch:")
    differing = [
        batch_fingerprint(UUID(int=2), "/v1/embeddings", "24h", {"a": "1", "b": "2"}),
        batch_fingerprint(FILE, "/v1/chat/completions", "24h", {"a": "1", "b": "2"}),
        batch_fingerprint(FILE, "/v1/embeddings", "1h", {"a": "1", "b": "2"}),
        batch_fingerprint(FILE, "/v1/embeddings", "24h", {"a": "1"}),
        batch_fingerprint(FILE, "/v1/embeddings", "24h", None),
        batch_fingerprint(FILE, "/v1/embeddings", "24h", {}),
        # another output expiry is another request (OpenAI's output_expires_after)
        batch_fingerprint(FILE, "/v1/embeddings", "24h", {"a": "1", "b": "2"}, timedelta(hours=2)),
    ]
    assert len({one, *differing}) == 8


def test_a_file_fingerprint_covers_purpose_name_and_content() -> None:
    one = file_fingerprint("batch", "in.jsonl", "ab" * 32)
    assert one.startswith("file:")
    assert one == file_fingerprint("batch", "in.jsonl", "ab" * 32)
    assert one != file_fingerprint("batch", "in2.jsonl", "ab" * 32)
    assert one != file_fingerprint("batch", "in.jsonl", "cd" * 32)
    assert one != file_fingerprint("other", "in.jsonl", "ab" * 32)
    assert one != file_fingerprint("batch", "in.jsonl", "ab" * 32, timedelta(hours=1))


def test_a_replay_must_be_the_same_request() -> None:
    key = IdempotencyKey("k", "batch:1")
    check_replay(key, "batch:1")
    with pytest.raises(Conflict, match="Idempotency-Key 'k' was already used"):
        check_replay(key, "batch:2")


def test_keys_live_for_a_day() -> None:
    now = datetime(2026, 1, 2, tzinfo=UTC)
    assert expired_before(now) == datetime(2026, 1, 1, tzinfo=UTC) == now - IDEMPOTENCY_TTL
