"""Token estimates before sending, and reported usage."""

from __future__ import annotations

import pytest

from fusillade.core.scheduling.tokens import estimate_tokens, used_tokens


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("", 0 + 256),
        ("abcd", 1 + 256),
        ("abcde", 2 + 256),  # ceil(5 / 4)
        ('{"max_tokens": 100}', 5 + 100),  # 19 characters
        ('{"max_completion_tokens":7}', 7 + 7),  # 27 characters
        ('{"max_output_tokens" : 12}', 7 + 12),  # 26 characters
        ('{"max_tokens": null, "max_completion_tokens": 9}', 12 + 9),  # 48: null is skipped
        ('{"max_tokens": 3, "max_completion_tokens": 9}', 12 + 3),  # 45: the first one found
        ('{"messages":[{"content":"\\"max_tokens\\": 5"}]}', 12 + 256),  # 46: inside a string
        ('{"max_tokens": "5"}', 5 + 256),  # 19: not an integer
    ],
)
def test_estimate_tokens(body: str, expected: int) -> None:
    assert estimate_tokens(body, default_max_output=256) == expected


def test_estimate_tokens_of_a_large_body() -> None:
    body = '{"max_tokens": 1000, "input": "' + "x" * 4_000_000 + '"}'
    assert estimate_tokens(body, default_max_output=0) == -(-len(body) // 4) + 1000


@pytest.mark.parametrize(
    ("input_tokens", "output_tokens", "expected"),
    [(None, None, None), (10, None, 10), (None, 4, 4), (10, 4, 14), (-5, 3, 3)],
)
def test_used_tokens(
    input_tokens: int | None, output_tokens: int | None, expected: int | None
) -> None:
    assert used_tokens(input_tokens, output_tokens) == expected
