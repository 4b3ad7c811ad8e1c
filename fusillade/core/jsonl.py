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

Result lines are formatted by ``fusillade.core.results``; strict JSON parsing lives in
``fusillade.core.strictjson``. A fast path (``fusillade.core.fastline``, orjson) takes
the lines it can show valid, a batch at a time, with the very template the checks here
would give; every other line, and every problem message, comes from the checks here.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Final, Protocol, cast

import attrs

from fusillade.core.fastline import fast_templates
from fusillade.core.models import RequestTemplate
from fusillade.core.strictjson import BadJSON, dumps_compact, loads_strict, show, storable
from fusillade.errors import InvalidJSONL

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


@attrs.frozen
class OversizedLine:
    """Stands for a line longer than the limit; its bytes were discarded unread."""


class Readable(Protocol):
    """A binary stream: ``read(size)`` returns at most ``size`` bytes, ``b""`` at the end."""

    def read(self, size: int, /) -> bytes: ...


class LineSplitter:
    """Splits bytes fed in chunks of any size into lines, holding at most one line.

    Memory: at most ``max_line_bytes + 1`` buffered, plus the chunk being split (and
    its lines).

    Lines are returned without their ``\\n`` (a ``\\r`` before it is kept). A line whose
    content exceeds ``max_line_bytes`` becomes one ``OversizedLine``, returned as soon as
    the limit is crossed; the rest of it is skipped as it arrives. A final empty segment
    (the file ends with ``\\n``) is not a line.
    """

    def __init__(self, max_line_bytes: int) -> None:
        self._max = max_line_bytes
        self._buf = bytearray()
        self._skipping = False

    def feed(self, chunk: bytes) -> list[bytes | OversizedLine]:
        if self._skipping:
            end = chunk.find(b"\n")
            if end < 0:
                return []
            self._skipping = False
            chunk = chunk[end + 1 :]
        out: list[bytes | OversizedLine] = []
        lines = chunk.split(b"\n")
        tail = lines.pop()
        if lines:
            if self._buf:
                self._buf += lines[0]
                lines[0] = bytes(self._buf)
                self._buf.clear()
            # Lines are seldom near the limit: check them one by one only then.
            if max(map(len, lines)) > self._max:
                out = [self._checked(line) for line in lines]
            else:
                out = list(lines)
        if tail:
            self._buf += tail
            # +1: a trailing "\r" of a CRLF line may still be in the buffer.
            if len(self._buf) > self._max + 1:
                self._buf.clear()
                self._skipping = True
                out.append(OversizedLine())
        return out

    def close(self) -> list[bytes | OversizedLine]:
        """The last line when the input did not end with ``\\n``."""
        if self._skipping or not self._buf:
            return []
        return [self._take()]

    def _take(self) -> bytes | OversizedLine:
        line = bytes(self._buf)
        self._buf.clear()
        return self._checked(line)

    def _checked(self, line: bytes) -> bytes | OversizedLine:
        size = len(line) - 1 if line.endswith(b"\r") else len(line)
        return OversizedLine() if size > self._max else line


def iter_jsonl_lines(
    stream: Readable,
    *,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    chunk_size: int = 64 * 1024,
) -> Iterator[bytes | OversizedLine]:
    """The lines of a binary stream, read ``chunk_size`` bytes at a time (see ``LineSplitter``)."""
    splitter = LineSplitter(max_line_bytes)
    while chunk := stream.read(chunk_size):
        yield from splitter.feed(chunk)
    yield from splitter.close()


def _kind(value: Any) -> str:
    kinds = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    return kinds.get(type(value), "a number")


_BOM: Final = b"\xef\xbb\xbf"
# custom_ids up to this many characters are kept as dict keys as is; longer ones by a
# 128-bit digest, so an entry stays small however long the ids are.
_EXACT_ID_CHARS: Final = 32


class JsonlValidator:
    """Checks one input file line by line; see the module docstring for the rules.

    Feed it with ``feed`` (chunks) or ``feed_line`` (whole lines), not both. The
    duplicate check keeps one dict entry per request line (about 150 bytes: ~7.5 MB at
    50,000 lines); ids longer than 32 characters are keyed by a 128-bit BLAKE2 digest
    (a false duplicate needs a digest collision, probability below n**2 / 2**129).
    """

    _fast_path: bool = True
    """Try ``fastline.fast_templates`` before the strict checks (tests turn it off)."""

    def __init__(self, limits: JsonlLimits | None = None) -> None:
        self.limits = limits if limits is not None else JsonlLimits()
        self._splitter = LineSplitter(self.limits.max_line_bytes)
        self._problems: list[LineProblem] = []
        self._truncated = False
        self._done = False
        self._line = 0
        self._requests = 0
        self._bytes = 0
        self._blank_since: int | None = None
        self._first_seen: dict[str | bytes, int] = {}

    @property
    def done(self) -> bool:
        """True once the verdict is known: further input is ignored."""
        return self._done

    @property
    def problems(self) -> tuple[LineProblem, ...]:
        return tuple(self._problems)

    @property
    def request_count(self) -> int:
        """Request (non-blank) lines seen so far."""
        return self._requests

    @property
    def line_count(self) -> int:
        """Lines seen so far, blank ones included."""
        return self._line

    def feed(self, chunk: bytes) -> list[RequestTemplate]:
        """Validate the lines completed by ``chunk``; return their templates."""
        if self._done:
            return []
        self._bytes += len(chunk)
        limit = self.limits.max_file_bytes
        if limit is not None and self._bytes > limit:
            self._fatal(None, ProblemCode.FILE_TOO_LARGE, f"file is larger than {limit} bytes")
            return []
        return [t for t in self._feed_all(self._splitter.feed(chunk)) if t is not None]

    def feed_line(self, line: bytes | OversizedLine) -> RequestTemplate | None:
        """Validate the next line (a trailing ``\\n`` or ``\\r\\n`` is allowed).

        Returns its template, or ``None`` when the line is blank or invalid, or the file
        already has a problem (it will be rejected, so nothing more is worth storing).
        """
        return self._feed_all([line])[0] if not self._done else None

    def _content(self, line: bytes, n: int) -> bytes:
        """Line ``n`` without its line break (nor, on the first line, a BOM)."""
        if n == 1 and line.startswith(_BOM):
            line = line[len(_BOM) :]
        return line.removesuffix(b"\n").removesuffix(b"\r")

    def _feed_one(
        self, line: bytes | OversizedLine, fast: RequestTemplate | None
    ) -> RequestTemplate | None:
        """``feed_line``, given the fast path's verdict on the line."""
        if self._done:
            return None
        self._line += 1
        n = self._line
        if isinstance(line, OversizedLine):
            self._oversized(n)
            return None
        if fast is not None:
            # A valid line: only the file-level rules are left.
            if not self._start_request(n):
                return None
            template = fast if self._unique(n, fast.custom_id) else None
            return template if not self._problems else None
        line = self._content(line, n)
        if not line.strip(b" \t\r"):
            if self._blank_since is None:
                self._blank_since = n
            return None
        if len(line) > self.limits.max_line_bytes:
            self._oversized(n)
            return None
        if not self._start_request(n):
            return None
        template = self._check(n, line)
        return template if not self._problems else None

    def finish(self) -> list[RequestTemplate]:
        """End of input: the templates of a last line without ``\\n``, if any.

        Raises:
            InvalidJSONL: the file had a problem, or no request line at all.
        """
        tail = [] if self._done else self._feed_all(self._splitter.close())
        templates = [t for t in tail if t is not None]
        if not self._problems and self._requests == 0:
            self._problems.append(
                LineProblem(None, None, ProblemCode.EMPTY_FILE, "file has no request lines")
            )
        self._done = True
        if self._problems:
            raise InvalidJSONL(self._problems, truncated=self._truncated)
        return templates

    def _feed_all(self, lines: Sequence[bytes | OversizedLine]) -> list[RequestTemplate | None]:
        """``feed_line`` for each line; the fast path looks at them all at once."""
        fast: list[RequestTemplate | None] = [None] * len(lines)
        if self._fast_path and not self._done:
            # Raw lines: JSON allows the "\r" and "\n" around a value (and orjson refuses a
            # BOM, so a first line with one is left to the strict path).
            limit = self.limits.max_line_bytes
            contents = [
                None if isinstance(line, OversizedLine) or len(line) > limit else line
                for line in lines
            ]
            fast = fast_templates(contents, self.limits)
            if all(fast) and self._take_all(cast(list[RequestTemplate], fast)):
                return fast
        return [self._feed_one(line, t) for line, t in zip(lines, fast, strict=True)]

    def _take_all(self, templates: list[RequestTemplate]) -> bool:
        """Count in a batch of valid lines at once, when ``_feed_one`` could add nothing.

        That is: no problem so far, no blank line pending, the line limit not reached,
        and the ``custom_id``s short (kept as they are), distinct and new.
        """
        k = len(templates)
        limit = self.limits.max_lines
        if self._problems or self._blank_since is not None or not templates:
            return False
        if limit is not None and self._requests + k > limit:
            return False
        ids = [t.custom_id for t in templates]
        if max(map(len, ids)) > _EXACT_ID_CHARS or len(set(ids)) != k:
            return False
        if not self._first_seen.keys().isdisjoint(ids):
            return False
        first = self._line + 1
        self._first_seen.update(zip(ids, range(first, first + k), strict=True))
        self._line += k
        self._requests += k
        return True

    def _oversized(self, n: int) -> None:
        if self._start_request(n):
            limit = self.limits.max_line_bytes
            self._add(n, None, ProblemCode.LINE_TOO_LONG, f"line is longer than {limit} bytes")

    def _start_request(self, n: int) -> bool:
        if self._blank_since is not None:
            blank, self._blank_since = self._blank_since, None
            self._add(blank, None, ProblemCode.BLANK_LINE, "blank line before the end of the file")
        self._requests += 1
        limit = self.limits.max_lines
        if limit is not None and self._requests > limit:
            self._fatal(n, ProblemCode.TOO_MANY_LINES, f"file has more than {limit} requests")
        return not self._done

    def _add(self, n: int | None, param: str | None, code: ProblemCode, message: str) -> None:
        if self._done:
            return
        if len(self._problems) >= self.limits.max_problems:
            # At least one problem goes unlisted: say so, and stop reading.
            self._truncated = True
            self._done = True
            return
        prefix = "" if n is None else f"line {n}: "
        self._problems.append(LineProblem(n, param, code, prefix + message))

    def _fatal(self, n: int | None, code: ProblemCode, message: str) -> None:
        self._add(n, None, code, message)
        self._done = True

    def _check(self, n: int, raw: bytes) -> RequestTemplate | None:
        """Every rule for one non-blank line; the template when all hold."""
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            self._add(n, None, ProblemCode.INVALID_ENCODING, f"not UTF-8 (byte {e.start + 1})")
            return None
        try:
            obj = loads_strict(text, self.limits.max_depth)
        except BadJSON as e:
            self._add(n, None, ProblemCode.INVALID_JSON, str(e))
            return None
        if not isinstance(obj, dict):
            self._add(n, None, ProblemCode.INVALID_JSON, f"expected an object, found {_kind(obj)}")
            return None
        problems_before = len(self._problems)
        custom_id = self._check_custom_id(n, obj)
        self._check_method(n, obj)
        url = self._check_url(n, obj)
        model, body = self._check_body(n, obj)
        if len(self._problems) != problems_before or self._done:
            return None
        if custom_id is None or url is None or model is None or body is None:
            return None  # pragma: no cover - each None came with a problem
        return RequestTemplate(custom_id=custom_id, model=model, body=body, path=url)

    def _string(self, n: int, obj: dict[str, Any], key: str, param: str) -> str | None:
        """``obj[key]`` when it is a storable string, else a problem and ``None``."""
        if key not in obj:
            self._add(n, param, ProblemCode.INVALID_REQUEST, f"{param} is missing")
            return None
        value = obj[key]
        if not isinstance(value, str):
            message = f"{param} must be a string, found {_kind(value)}"
            self._add(n, param, ProblemCode.INVALID_REQUEST, message)
            return None
        if not storable(value):
            message = f"{param} contains NUL or an unpaired surrogate"
            self._add(n, param, ProblemCode.INVALID_ENCODING, message)
            return None
        return value

    def _check_custom_id(self, n: int, obj: dict[str, Any]) -> str | None:
        custom_id = self._string(n, obj, "custom_id", "custom_id")
        if custom_id is None:
            return None
        limit = self.limits.max_custom_id
        if not 1 <= len(custom_id) <= limit:
            message = f"custom_id must have 1 to {limit} characters, found {len(custom_id)}"
            self._add(n, "custom_id", ProblemCode.INVALID_REQUEST, message)
            return None
        return custom_id if self._unique(n, custom_id) else None

    def _unique(self, n: int, custom_id: str) -> bool:
        """Record ``custom_id`` at line ``n``; a duplicate is a problem (and ``False``)."""
        key: str | bytes = custom_id
        if len(custom_id) > _EXACT_ID_CHARS:
            key = hashlib.blake2b(custom_id.encode("utf-8"), digest_size=16).digest()
        first = self._first_seen.setdefault(key, n)
        if first != n:
            message = f"custom_id {show(custom_id)} is a duplicate of line {first}"
            self._add(n, "custom_id", ProblemCode.DUPLICATE_CUSTOM_ID, message)
            return False
        return True

    def _check_method(self, n: int, obj: dict[str, Any]) -> None:
        method = self._string(n, obj, "method", "method")
        if method is not None and method != "POST":
            message = f"method must be 'POST', found {show(method)}"
            self._add(n, "method", ProblemCode.INVALID_REQUEST, message)

    def _check_url(self, n: int, obj: dict[str, Any]) -> str | None:
        url = self._string(n, obj, "url", "url")
        if url is None:
            return None
        required = self.limits.required_url
        if required is not None and url != required:
            message = f"url {show(url)} does not match the batch endpoint {show(required)}"
            self._add(n, "url", ProblemCode.MISMATCHED_ENDPOINT, message)
            return None
        if url not in self.limits.allowed_endpoints:
            allowed = ", ".join(self.limits.allowed_endpoints)
            message = f"url {show(url)} is not an allowed endpoint ({allowed})"
            self._add(n, "url", ProblemCode.INVALID_REQUEST, message)
            return None
        return url

    def _check_body(self, n: int, obj: dict[str, Any]) -> tuple[str | None, str | None]:
        """The model and the body text, each ``None`` after a problem."""
        if "body" not in obj:
            self._add(n, "body", ProblemCode.INVALID_REQUEST, "body is missing")
            return None, None
        body = obj["body"]
        if not isinstance(body, dict):
            message = f"body must be an object, found {_kind(body)}"
            self._add(n, "body", ProblemCode.INVALID_REQUEST, message)
            return None, None
        model = self._string(n, body, "model", "body.model")
        limit = self.limits.max_model_chars
        if model is not None and not 1 <= len(model) <= limit:
            message = f"body.model must have 1 to {limit} characters, found {len(model)}"
            self._add(n, "body.model", ProblemCode.INVALID_REQUEST, message)
            model = None
        return model, dumps_compact(body)


def validate_lines(
    lines: Iterable[bytes | OversizedLine], limits: JsonlLimits | None = None
) -> list[RequestTemplate]:
    """Validate whole lines (e.g. from ``iter_jsonl_lines``); all templates, or raise.

    Raises:
        InvalidJSONL: see ``JsonlValidator.finish``.
    """
    validator = JsonlValidator(limits)
    out = []
    for line in lines:
        template = validator.feed_line(line)
        if template is not None:
            out.append(template)
        if validator.done:
            break
    out.extend(validator.finish())
    return out


def iter_validated(
    stream: Readable, limits: JsonlLimits | None = None, *, chunk_size: int = 64 * 1024
) -> Iterator[RequestTemplate]:
    """The templates of a binary stream as it is read, ``max_file_bytes`` included.

    Meant to be consumed inside a transaction: it raises ``InvalidJSONL`` at the end
    (or as soon as the verdict is known, without reading further) when the file has a
    problem, after yielding the templates of the lines before the first one.

    Raises:
        InvalidJSONL: see ``JsonlValidator.finish``.
    """
    validator = JsonlValidator(limits)
    while not validator.done and (chunk := stream.read(chunk_size)):
        yield from validator.feed(chunk)
    yield from validator.finish()


def validate_stream(
    stream: Readable, limits: JsonlLimits | None = None, *, chunk_size: int = 64 * 1024
) -> list[RequestTemplate]:
    """All templates of a binary stream, or raise (see ``iter_validated``).

    Raises:
        InvalidJSONL: see ``JsonlValidator.finish``.
    """
    return list(iter_validated(stream, limits, chunk_size=chunk_size))


def validate_file(
    stream: Readable, limits: JsonlLimits | None = None, *, chunk_size: int = 64 * 1024
) -> RequestTemplate:
    """Check a whole file without keeping its templates; return the first one.

    For a dry run before anything is stored (``fusillade run``): memory stays bounded
    whatever the file size. The caller opens the file (the core does no I/O).

    Raises:
        InvalidJSONL: see ``JsonlValidator.finish``.
    """
    first: RequestTemplate | None = None
    for template in iter_validated(stream, limits, chunk_size=chunk_size):
        if first is None:
            first = template
    # finish() raised for a file without request lines, so there is a first template.
    assert first is not None
    return first
