"""The limits of one input file, and the problems it can have."""

from __future__ import annotations

import enum
from typing import Final

import attrs

MiB: Final = 1024 * 1024
DEFAULT_MAX_LINE_BYTES: Final = 8 * MiB

DEFAULT_ENDPOINTS: Final = (
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/completions",
    "/v1/responses",
    "/v1/moderations",
)


class ProblemCode(enum.StrEnum):
    """The ``code`` of a ``LineProblem``; ``LIMIT_CODES`` are the size limits (HTTP 413)."""

    EMPTY_FILE = "empty_file"
    FILE_TOO_LARGE = "file_too_large"
    TOO_MANY_LINES = "too_many_lines"
    LINE_TOO_LONG = "line_too_long"
    BLANK_LINE = "blank_line"
    INVALID_ENCODING = "invalid_encoding"
    INVALID_JSON = "invalid_json"
    INVALID_REQUEST = "invalid_request"
    MISMATCHED_ENDPOINT = "mismatched_endpoint"
    DUPLICATE_CUSTOM_ID = "duplicate_custom_id"


LIMIT_CODES: Final = frozenset(
    {ProblemCode.FILE_TOO_LARGE, ProblemCode.TOO_MANY_LINES, ProblemCode.LINE_TOO_LONG}
)


@attrs.frozen
class LineProblem:
    """One problem of an input file, shaped like OpenAI's ``BatchError``.

    ``line`` is 1-based, or ``None`` for the whole file (empty, too large); when it is set,
    ``message`` starts with ``"line N: "``. ``param`` names the field (``custom_id``,
    ``method``, ``url``, ``body``, ``body.model``) or is ``None``.
    """

    line: int | None
    param: str | None
    code: ProblemCode
    message: str

    @classmethod
    def at(
        cls, line: int | None, param: str | None, code: ProblemCode, message: str
    ) -> LineProblem:
        """The problem, its message prefixed with ``"line N: "`` when ``line`` is set."""
        prefix = "" if line is None else f"line {line}: "
        return cls(line, param, code, prefix + message)


@attrs.frozen
class JsonlLimits:
    """Limits of one input file; the defaults are OpenAI's where OpenAI has one.

    ``max_line_bytes`` (8 MiB, excluding the line break) is ours: enough for a request
    carrying a few base64 images, while bounding what one upload holds in memory.
    ``max_file_bytes`` (200 MiB) is checked by ``JsonlValidator.feed`` only; callers of
    ``feed_line`` see the raw bytes and check it themselves. ``None`` lifts the file size
    or line count limit (the duplicate check still needs ~150 bytes per line). ``max_depth``
    bounds JSON nesting (``{}`` is depth 1). ``required_url``, when set, is the batch
    endpoint that every line's ``url`` must equal.
    """

    max_file_bytes: int | None = 200 * MiB
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    max_lines: int | None = 50_000
    max_custom_id: int = 512
    max_model_chars: int = 256
    max_problems: int = 20
    max_depth: int = 64
    allowed_endpoints: tuple[str, ...] = DEFAULT_ENDPOINTS
    required_url: str | None = None
