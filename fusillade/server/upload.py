"""``POST /v1/files``: a multipart upload checked while it streams, spooled, never held whole.

Theory of operation
-------------------
``UploadReceiver`` is sans-I/O and synchronous: ``feed(chunk)`` pushes raw body bytes
through a push multipart parser (``multipart.PushMultipartParser``); the bytes of the
``file`` part go into a ``JsonlValidator``, and the templates it returns into a
``TemplateSpool`` (in memory up to ``SPOOL_MEMORY`` bytes, then a temporary file); the
``purpose`` part is kept (it is short); other parts are skipped. ``finish()`` checks the
multipart stream was complete and the fields were right, and raises the validator's
verdict.

``receive_upload`` drives it from ``intake.body_chunks`` (the size limit, the body read
timeout, a client going away), batching body chunks and
running the parsing and validation in a worker thread (JSON checks of a 200 MB file take
seconds; the event loop also runs the daemon). Once the verdict is a rejection it stops
parsing and only drains the rest of the body (bounded by the route's size limit), so the
client, still sending, gets the answer instead of a reset connection. A size limit
(file, line count) ends the upload at once with a 413.

Only when the whole file was valid is it stored: the route hands the spooled templates to
``Repository.create_file`` (one COPY in one transaction). The file is parsed once; no
database connection is held while a (possibly slow) client sends it.
"""

from __future__ import annotations

import hashlib
from contextlib import aclosing
from typing import Any, Final

import anyio.to_thread
import attrs

# multipart (a Litestar dependency) ships no type information.
import multipart  # type: ignore[import-untyped]
from litestar import Request

from fusillade.core.jsonl import LIMIT_CODES, JsonlLimits, JsonlValidator
from fusillade.core.strictjson import storable
from fusillade.errors import ValidationError
from fusillade.server.context import BodyTiming
from fusillade.server.intake import body_chunks
from fusillade.server.spool import TemplateSpool

MiB: Final = 1024 * 1024
SPOOL_MEMORY: Final = 8 * MiB
"""Bytes of validated templates kept in memory before the spool moves to a temporary file."""
FEED_BATCH: Final = 256 * 1024
"""Body bytes gathered before one worker-thread hop (parse + validate + spool)."""
VALIDATE_CHUNK: Final = 64 * 1024
"""Bytes of the file given to the validator at once (see ``UploadReceiver._event``)."""
MAX_PURPOSE_BYTES: Final = 64
MAX_FILENAME_CHARS: Final = 1024
MAX_PARTS: Final = 16
DEFAULT_FILENAME: Final = "upload.jsonl"
MULTIPART_SLACK: Final = 1 * MiB
"""Allowed on top of the file size limit for the multipart framing and other fields."""
EXPIRY_FIELDS: Final = ("expires_after[anchor]", "expires_after[seconds]")
"""OpenAI's optional expiry of an upload (``fusillade.engine._rules.expires_after``)."""


@attrs.define
class Received:
    """A complete, valid upload: its templates are in ``spool`` (the caller closes it);
    ``size`` is the file part's size in bytes, ``sha256`` its hex digest (when asked)."""

    filename: str
    purpose: str
    size: int
    spool: TemplateSpool
    sha256: str | None = None
    # the raw `expires_after[anchor]` and `expires_after[seconds]` fields, when sent
    expires_after: dict[str, str] = attrs.field(factory=dict)


def _malformed(detail: object) -> ValidationError:
    return ValidationError(
        f"malformed multipart/form-data body: {detail}; send the JSONL as the 'file' "
        "field and 'batch' as the 'purpose' field",
        param="file",
    )


def boundary_of(content_type: str | None) -> str:
    """The multipart boundary of a ``Content-Type`` header value.

    Raises:
        ValidationError: not ``multipart/form-data`` or no boundary.
    """
    kind, options = multipart.parse_options_header(content_type or "")
    boundary = options.get("boundary")
    if kind != "multipart/form-data" or not boundary:
        shown = (content_type or "none")[:100]
        raise ValidationError(
            f"expected a multipart/form-data body with 'file' and 'purpose' fields, "
            f"got Content-Type {shown!r}",
            param="file",
        )
    return str(boundary)


class UploadReceiver:
    """Parses one multipart body fed in chunks; see the module docstring.

    Use it as a context manager: leaving the block closes (and deletes) the spool unless
    ``finish`` handed it over. ``digest``: hash the file part (an idempotent upload's
    fingerprint).
    """

    def __init__(self, boundary: str, limits: JsonlLimits, *, digest: bool = False) -> None:
        try:
            self._parser = multipart.PushMultipartParser(
                boundary, max_segment_count=MAX_PARTS, strict=False
            )
        except multipart.MultipartError as e:
            raise _malformed(e) from None
        self._validator = JsonlValidator(limits)
        self._spool: TemplateSpool | None = TemplateSpool(SPOOL_MEMORY)
        self._part: str | None = None
        self._file_parts = 0
        self._filename: str | None = None
        self._purpose = bytearray()
        self._purpose_seen = False
        self._expiry: dict[str, bytearray] = {}
        self._size = 0
        self._sha256 = hashlib.sha256() if digest else None
        self._rejected: ValidationError | None = None

    def __enter__(self) -> UploadReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._spool is not None:
            self._spool.close()
            self._spool = None

    @property
    def rejected(self) -> bool:
        """True once the upload is known to be rejected; further input is only drained."""
        return self._rejected is not None or self._validator.done

    def feed(self, chunk: bytes) -> None:
        """Parse ``chunk`` (any size); non-blocking but CPU-bound: call from a thread.

        Raises:
            InvalidJSONL: a size limit was exceeded (stop reading: 413).
        """
        if self.rejected or not chunk:  # an empty chunk would tell the parser "end of input"
            return
        try:
            for event in self._parser.parse(chunk):
                self._event(event)
                if self.rejected:
                    break
        except multipart.ParserLimitReached:
            self._rejected = _malformed(f"more than {MAX_PARTS} parts or an oversized header")
        except multipart.MultipartError as e:
            self._rejected = _malformed(e)
        except ValidationError as e:
            self._rejected = e
        self._raise_limit()

    def _raise_limit(self) -> None:
        problems = self._validator.problems
        if self._validator.done and any(p.code in LIMIT_CODES for p in problems):
            self._validator.finish()  # raises InvalidJSONL

    def _event(self, event: Any) -> None:
        if isinstance(event, multipart.MultipartSegment):
            self._start(event)
        elif event is None:
            self._part = None
        elif self._part == "file":
            assert self._spool is not None
            self._size += len(event)
            if self._sha256 is not None:
                self._sha256.update(event)
            limit = self._validator.limits.max_file_bytes
            if limit is not None and self._size > limit:
                self._validator.feed(event)  # whole: "too large" comes before its lines
                return
            # Slices of VALIDATE_CHUNK: the validator holds each slice's templates until
            # they are spooled, and more at once costs more (garbage collection).
            for start in range(0, len(event), VALIDATE_CHUNK):
                self._spool.write(self._validator.feed(event[start : start + VALIDATE_CHUNK]))
        elif self._part == "purpose":
            self._purpose += event
            if len(self._purpose) > MAX_PURPOSE_BYTES:
                raise ValidationError("purpose is too long; use 'batch'", param="purpose")
        elif self._part in EXPIRY_FIELDS:
            value = self._expiry[self._part]
            value += event
            if len(value) > MAX_PURPOSE_BYTES:
                raise ValidationError(f"{self._part} is too long", param=self._part)

    def _start(self, segment: Any) -> None:
        name = segment.name
        if name == "file":
            self._file_parts += 1
            if self._file_parts > 1:
                raise ValidationError("more than one 'file' field", param="file")
            filename = segment.filename
            if filename is not None:
                filename = filename.replace("\\", "/").rsplit("/", 1)[-1]
            if filename:
                if len(filename) > MAX_FILENAME_CHARS or not storable(filename):
                    raise ValidationError(
                        f"the file name must have at most {MAX_FILENAME_CHARS} characters "
                        "and no NUL",
                        param="file",
                    )
                self._filename = filename
        elif name in EXPIRY_FIELDS:
            if name in self._expiry:
                raise ValidationError(f"more than one {name!r} field", param=name)
            self._expiry[name] = bytearray()
        elif name == "purpose":
            if self._purpose_seen:
                raise ValidationError("more than one 'purpose' field", param="purpose")
            self._purpose_seen = True
        self._part = name

    def finish(self) -> Received:
        """End of the body: the upload, or why it is rejected.

        Raises:
            ValidationError: malformed multipart, a missing field, a purpose other than
                ``batch``.
            InvalidJSONL: the file has problems (``LIMIT_CODES`` ones mean 413).
        """
        if self._validator.problems:
            self._validator.finish()  # raises InvalidJSONL with the file's problems
        if self._rejected is None:
            try:
                self._parser.close(check_complete=True)
            except multipart.MultipartError as e:
                self._rejected = _malformed(e)
        if self._rejected is not None:
            raise self._rejected
        if self._file_parts == 0:
            raise ValidationError("the 'file' field is missing", param="file")
        if not self._purpose_seen:
            raise ValidationError("the 'purpose' field is missing; use 'batch'", param="purpose")
        purpose = self._purpose.decode("utf-8", "replace")
        if purpose != "batch":
            raise ValidationError(
                f"purpose {purpose[:64]!r} is not supported: this server only stores batch "
                "input files (purpose 'batch')",
                param="purpose",
            )
        spool, self._spool = self._spool, None
        assert spool is not None
        try:
            # the last line when the file does not end with a newline; raises
            # InvalidJSONL, e.g. for an empty file
            spool.write(self._validator.finish())
        except BaseException:
            spool.close()
            raise
        digest = self._sha256.hexdigest() if self._sha256 is not None else None
        expiry = {k: v.decode("utf-8", "replace") for k, v in self._expiry.items()}
        return Received(
            self._filename or DEFAULT_FILENAME, purpose, self._size, spool, digest, expiry
        )


async def receive_upload(
    request: Request[Any, Any, Any],
    limits: JsonlLimits,
    *,
    body_limit: int,
    timing: BodyTiming,
    digest: bool = False,
) -> Received:
    """Read, parse and validate a multipart upload; the caller closes ``spool``.
    ``digest``: also hash the file's bytes (``Received.sha256``).

    The body is read by ``intake.body_chunks``: at most ``body_limit`` bytes, in time.

    Raises:
        ValidationError, InvalidJSONL, RequestEntityTooLarge, ClientDisconnected,
        Refused (408: too slow).
    """
    boundary = boundary_of(request.headers.get("content-type"))
    with UploadReceiver(boundary, limits, digest=digest) as receiver:
        pending: list[bytes] = []
        pending_size = 0
        async with aclosing(body_chunks(request, body_limit, timing)) as chunks:
            async for chunk in chunks:
                if receiver.rejected:
                    continue  # drain: the client gets the answer, not a reset connection
                pending.append(chunk)
                pending_size += len(chunk)
                if pending_size >= FEED_BATCH:
                    data = b"".join(pending)
                    pending.clear()
                    pending_size = 0
                    await anyio.to_thread.run_sync(receiver.feed, data)
        if pending:
            await anyio.to_thread.run_sync(receiver.feed, b"".join(pending))
        return await anyio.to_thread.run_sync(receiver.finish)
