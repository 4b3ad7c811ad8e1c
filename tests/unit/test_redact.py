"""URL credentials never reach printed or logged text (fusillade.redact)."""

from __future__ import annotations

import pytest

from fusillade.redact import mask_urls
from fusillade.store.errors import first_line


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("https://user:SECRET@proxy/v1", "https://***@proxy/v1"),
        ("https://SECRET@proxy", "https://***@proxy"),
        ("https://u:SE/CRET@proxy/v1", "https://***@proxy/v1"),
        ("postgresql://app:SECRET@db/f", "postgresql://app:***@db/f"),
        ("postgresql://app@db/f", "postgresql://app@db/f"),
        ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1"),
        ('cannot reach "https://a:SECRET@h/v1" (x)', 'cannot reach "https://***@h/v1" (x)'),
    ],
)
def test_mask_urls_hides_userinfo(text: str, masked: str) -> None:
    assert mask_urls(text) == masked


def test_store_error_messages_mask_urls() -> None:
    exc = ValueError('invalid dsn "postgresql://app:SECRET@db:x/f"\nmore')
    assert first_line(exc) == 'invalid dsn "postgresql://app:***@db:x/f"'
