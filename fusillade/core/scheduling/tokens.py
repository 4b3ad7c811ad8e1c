"""A request's token estimate (reserved before sending) and an answer's reported usage.

The estimate is deliberately cheap: bodies may be megabytes, so the prompt is counted as
one token per four characters of the whole body (no JSON parse), and the output limit is
found by one regular-expression search.
"""

from __future__ import annotations

import re

# The first output limit named in the body, with an integer value ("max_tokens": null
# and friends are skipped). A name inside a JSON string is escaped (\"max_tokens\") and
# does not match.
_MAX_OUTPUT = re.compile(
    r'"(?:max_tokens|max_completion_tokens|max_output_tokens)"\s*:\s*(\d{1,12})\b'
)


def estimate_tokens(body: str, *, default_max_output: int) -> int:
    """Prompt estimate ``ceil(len(body) / 4)`` plus the body's output limit.

    The output limit is the first ``max_tokens`` / ``max_completion_tokens`` /
    ``max_output_tokens`` with an integer value, else ``default_max_output``.

    >>> estimate_tokens('{"max_tokens": 10}', default_max_output=100)
    15
    """
    prompt = -(-len(body) // 4)
    match = _MAX_OUTPUT.search(body)
    output = int(match.group(1)) if match else default_max_output
    return prompt + max(0, output)


def used_tokens(input_tokens: int | None, output_tokens: int | None) -> int | None:
    """Tokens an answer's ``usage`` reports: the sum of the known parts; None if neither is.

    Embeddings report input tokens only. Negative counts are not believed (read as 0).
    """
    if input_tokens is None and output_tokens is None:
        return None
    return max(0, input_tokens or 0) + max(0, output_tokens or 0)
