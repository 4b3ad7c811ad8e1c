"""The one error tree of fusillade.

::

    FusilladeError
    ├── ConfigError                  bad configuration or command-line input
    ├── ValidationError              bad user input (JSONL lines, batch parameters)
    │   └── InvalidJSONL             carries the first problems, each with line and field
    ├── NotFound                     no such file/batch/request (or not the caller's)
    ├── Conflict                     the operation does not fit the current state
    ├── IllegalTransition            a (state, event) pair the state table does not allow
    └── StoreError                   the database failed or refused; retrying will not help
        ├── StoreUnavailable         transient: cannot connect / connection lost / timed out /
        │                            serialization failure / deadlock; retrying may help
        └── MigrationError           migrations cannot be applied (e.g. checksum mismatch)

psycopg errors become ``StoreError`` at exactly one boundary (``fusillade.store.errors``);
httpx errors become outcomes (not exceptions) in the dispatcher.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Final
from uuid import UUID

from fusillade.core.ids import IdKind, format_id

if TYPE_CHECKING:  # the core's validator raises InvalidJSONL: no import at run time
    from fusillade.core.jsonl import LineProblem

ECHO_LIMIT: Final = 100
"""Characters of a client's text (an id, a path) that an error message quotes, at most."""


def echo(text: str) -> str:
    """``text`` as an error message may quote it: cut to ``ECHO_LIMIT`` characters."""
    return text if len(text) <= ECHO_LIMIT else text[:ECHO_LIMIT] + "..."


class FusilladeError(Exception):
    """Base of every error fusillade raises on purpose."""


class ConfigError(FusilladeError):
    """Configuration or command-line input that cannot be used."""


class ValidationError(FusilladeError):
    """User input that breaks a documented rule."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class InvalidJSONL(ValidationError):
    """A JSONL input with problems; ``problems`` holds the first ones, in line order."""

    def __init__(self, problems: Sequence[LineProblem], *, truncated: bool = False) -> None:
        self.problems = tuple(problems)
        self.truncated = truncated
        first = self.problems[0] if self.problems else None
        message = first.message if first is not None else "invalid JSONL input"
        more = len(self.problems) - 1
        if more > 0 or truncated:
            message += f" (and {more}{'+' if truncated else ''} more problems)"
        super().__init__(message, param=first.param if first is not None else None)


_ID_KINDS: Final[Mapping[str, IdKind]] = MappingProxyType(
    {"file": "file", "input file": "file", "batch": "batch", "request": "request"}
)


class NotFound(FusilladeError):
    """The object does not exist, or belongs to another owner (never distinguished).

    ``ident`` is what was looked up: a uuid (the store) or the text a client sent (a
    malformed id). ``public_id`` names it as clients know it: a uuid as its public id
    (``file-...``, ``batch_...``), which is the only spelling that reaches a uuid, so it
    is the id the client sent; a text cut to ``ECHO_LIMIT`` characters.
    """

    def __init__(self, kind: str, ident: UUID | str) -> None:
        self.kind = kind
        self.ident = ident
        id_kind = _ID_KINDS.get(kind)
        if isinstance(ident, UUID) and id_kind is not None:
            self.public_id = format_id(id_kind, ident)
        else:
            self.public_id = echo(str(ident))
        super().__init__(f"no {kind} with id {self.public_id}")


class Conflict(FusilladeError):
    """The operation is not allowed in the object's current state."""


class IllegalTransition(FusilladeError):
    """A (state, event) pair that the state table does not contain."""

    def __init__(self, state: object, event: object) -> None:
        super().__init__(f"illegal transition: {event} from {state}")
        self.state = state
        self.event = event


class StoreError(FusilladeError):
    """The database failed in a way the caller cannot fix by changing its input."""


class StoreUnavailable(StoreError):
    """Transient: the database cannot be reached, the connection dropped, a query timed
    out, or the transaction lost a serialization or deadlock conflict. The same call may
    succeed later; any other ``StoreError`` will not (``fusillade.store.errors``)."""


class MigrationError(StoreError):
    """Migrations cannot be applied, e.g. an applied file's checksum changed."""
