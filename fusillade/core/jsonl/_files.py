"""A whole input stream at once: its templates as they are read, or a dry run."""

from __future__ import annotations

from collections.abc import Iterator

from fusillade.core.jsonl._limits import JsonlLimits
from fusillade.core.jsonl._split import Readable
from fusillade.core.jsonl._validator import JsonlValidator
from fusillade.core.models import RequestTemplate


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
