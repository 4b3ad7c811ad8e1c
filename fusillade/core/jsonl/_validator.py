"""``JsonlValidator``: one input file, line after line, as it streams.

Each line is checked alone by ``check_line`` (or shown valid by the fast path); the
validator adds the rules across lines: a blank line before the end, duplicate
``custom_id``s, the line and size limits, and the cap on problems listed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Final, cast

from fusillade.core.fastline import fast_templates
from fusillade.core.jsonl._limits import JsonlLimits, LineProblem, ProblemCode
from fusillade.core.jsonl._line import check_line
from fusillade.core.jsonl._split import LineSplitter, OversizedLine
from fusillade.core.models import RequestTemplate
from fusillade.core.strictjson import show
from fusillade.errors import InvalidJSONL

_BOM: Final = b"\xef\xbb\xbf"
# custom_ids up to this many characters are kept as dict keys as is; longer ones by a
# 128-bit digest, so an entry stays small however long the ids are.
_EXACT_ID_CHARS: Final = 32


class JsonlValidator:
    """Checks one input file line by line; see ``fusillade.core.jsonl`` for the rules.

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
        checked = check_line(n, line, self.limits)
        # A valid custom_id is recorded even on a line with other problems, and its
        # duplicate listed first (its field is checked first).
        unique = checked.custom_id is None or self._unique(n, checked.custom_id)
        for problem in checked.problems:
            self._append(problem)
        return checked.template if unique and not self._problems else None

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
            self._add(n, ProblemCode.LINE_TOO_LONG, f"line is longer than {limit} bytes")

    def _start_request(self, n: int) -> bool:
        if self._blank_since is not None:
            blank, self._blank_since = self._blank_since, None
            self._add(blank, ProblemCode.BLANK_LINE, "blank line before the end of the file")
        self._requests += 1
        limit = self.limits.max_lines
        if limit is not None and self._requests > limit:
            self._fatal(n, ProblemCode.TOO_MANY_LINES, f"file has more than {limit} requests")
        return not self._done

    def _unique(self, n: int, custom_id: str) -> bool:
        """Record ``custom_id`` at line ``n``; a duplicate is a problem (and ``False``)."""
        key: str | bytes = custom_id
        if len(custom_id) > _EXACT_ID_CHARS:
            key = hashlib.blake2b(custom_id.encode("utf-8"), digest_size=16).digest()
        first = self._first_seen.setdefault(key, n)
        if first != n:
            message = f"custom_id {show(custom_id)} is a duplicate of line {first}"
            self._append(LineProblem.at(n, "custom_id", ProblemCode.DUPLICATE_CUSTOM_ID, message))
            return False
        return True

    def _add(self, n: int | None, code: ProblemCode, message: str) -> None:
        """A problem of the file, or of line ``n`` as a whole (no ``param``)."""
        self._append(LineProblem.at(n, None, code, message))

    def _append(self, problem: LineProblem) -> None:
        if self._done:
            return
        if len(self._problems) >= self.limits.max_problems:
            # At least one problem goes unlisted: say so, and stop reading.
            self._truncated = True
            self._done = True
            return
        self._problems.append(problem)

    def _fatal(self, n: int | None, code: ProblemCode, message: str) -> None:
        self._add(n, code, message)
        self._done = True
