"""The one place psycopg errors become fusillade errors (see ``fusillade.errors``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import psycopg
import psycopg.errors
from psycopg_pool import PoolTimeout

from fusillade.errors import StoreError, StoreUnavailable
from fusillade.redact import mask_urls


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message, with the credentials of any URL masked."""
    text = mask_urls(str(exc)).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextlib.contextmanager
def translate_errors(
    other: type[StoreError] = StoreError, what: str = "database error"
) -> Iterator[None]:
    """Translate psycopg errors raised inside the block, by exception class (SQLSTATE).

    Transient errors become ``StoreUnavailable`` (the same call may succeed later): lost
    or refused connections, pool and statement timeouts, serialization failures and
    deadlocks (psycopg's ``OperationalError`` family). Any other psycopg error becomes
    ``other`` (``StoreError`` unless a caller needs a subclass): retrying the same call
    gives the same answer. So does a value over one of PostgreSQL's limits (SQLSTATE
    class 54, an ``OperationalError`` in psycopg) and a ``str`` that cannot be sent at
    all (``UnicodeEncodeError`` from psycopg encoding it: a lone surrogate).
    Messages keep the first line of the server's text only: never a password or a
    parameter value.
    """
    try:
        yield
    except psycopg.errors.ProgramLimitExceeded as exc:
        raise other(f"{what}: {first_line(exc)}") from exc
    except (psycopg.OperationalError, psycopg.errors.QueryCanceled, PoolTimeout) as exc:
        raise StoreUnavailable(f"database unavailable: {first_line(exc)}") from exc
    except psycopg.Error as exc:
        raise other(f"{what}: {first_line(exc)}") from exc
    except UnicodeEncodeError as exc:
        raise other(f"{what}: a text value cannot be encoded for the database") from exc
