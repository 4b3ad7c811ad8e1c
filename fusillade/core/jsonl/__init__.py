"""OpenAI batch JSONL input: split and validate lines while they stream.

Theory of operation
-------------------
An upload is checked while it streams: ``JsonlValidator.feed`` takes chunks of any size
(``feed_line`` takes lines already split) and returns the ``RequestTemplate`` of each
valid line as soon as its line is complete, so the caller can insert templates in the
same pass. ``finish`` then raises ``InvalidJSONL`` if anything was wrong. Acceptance is
all-or-nothing: after the first problem no more templates are returned (the caller rolls
back), but lines are still checked so the user sees up to ``max_problems`` problems at
once; then, or on a file-level problem (too large, too many lines), the validator stops
(``done``) and the caller may stop reading.

Memory is bounded: a line longer than ``max_line_bytes`` is never held whole (the
splitter reports it as an ``OversizedLine`` and skips to its end), and the duplicate
check keeps one small dict entry per line (see ``JsonlValidator``).

Input rules (a problem names the 1-based line and the field, ``param``):

- The file is UTF-8; a UTF-8 byte order mark on the first line is ignored. Lines end in
  ``\\n`` or ``\\r\\n``.
- Blank lines (only spaces, tabs, CR) at the end of the file are ignored. A blank line
  followed by a non-blank one is a problem (``blank_line``, once per run of blanks): the
  format is one request per line, and a stray blank usually means a broken export.
- Each other line is one JSON object (strict JSON: no ``NaN``/``Infinity``, no number
  outside the float range, no duplicate keys at any depth, nesting at most ``max_depth``).
- ``custom_id``: a string of 1..``max_custom_id`` characters, unique in the file, without
  NUL or unpaired surrogates (PostgreSQL text cannot hold them).
- ``method``: exactly ``"POST"``.
- ``url``: one of ``allowed_endpoints``, and equal to ``required_url`` when that is set.
- ``body``: a JSON object whose ``model`` is a non-empty string of at most
  ``max_model_chars`` characters. The template's body is the body re-serialised compactly
  (floats in their shortest round-tripping form; a body holding an unpaired surrogate
  escape such as ``"\\udc00"`` is written all-ASCII, so it stays valid UTF-8 text).
- Other keys of the line are ignored.

The parts, each a private module:

- ``_limits``: ``JsonlLimits`` and the problems a file can have (``LineProblem``,
  ``ProblemCode``).
- ``_split``: bytes in chunks of any size -> lines, in bounded memory (``LineSplitter``).
- ``_line``: the rules of one line alone (JSON and fields), ``check_line``.
- ``_validator``: ``JsonlValidator``, the rules across lines (blank lines, duplicate
  ids, counts, the problem cap) and the fast path.
- ``_files``: a whole stream at once (``iter_validated``, ``validate_file``).

Result lines are formatted by ``fusillade.core.results``; strict JSON parsing lives in
``fusillade.core.strictjson``. A fast path (``fusillade.core.fastline``, orjson) takes
the lines it can show valid, a batch at a time, with the very template the checks here
would give; every other line, and every problem message, comes from the checks here.
"""

from __future__ import annotations

from fusillade.core.jsonl._files import iter_validated, validate_file
from fusillade.core.jsonl._limits import (
    DEFAULT_ENDPOINTS,
    DEFAULT_MAX_LINE_BYTES,
    LIMIT_CODES,
    JsonlLimits,
    LineProblem,
    ProblemCode,
)
from fusillade.core.jsonl._line import CheckedLine, check_line
from fusillade.core.jsonl._split import LineSplitter, OversizedLine, Readable
from fusillade.core.jsonl._validator import JsonlValidator

__all__ = [
    "DEFAULT_ENDPOINTS",
    "DEFAULT_MAX_LINE_BYTES",
    "LIMIT_CODES",
    "CheckedLine",
    "JsonlLimits",
    "JsonlValidator",
    "LineProblem",
    "LineSplitter",
    "OversizedLine",
    "ProblemCode",
    "Readable",
    "check_line",
    "iter_validated",
    "validate_file",
]
