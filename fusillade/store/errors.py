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
    """Translate psycopg errors raised inside the block.

    Lost or refused connections, pool and statement timeouts become
    ``StoreUnavailable`` (the caller may retry later); any other psycopg error becomes
    ``other`` (``StoreError`` unless a caller needs a subclass). Messages keep the
    first line of the server's text only: never a password or a parameter value.
    """
    try:
        yield
    except (psycopg.OperationalError, psycopg.errors.QueryCanceled, PoolTimeout) as exc:
        raise StoreUnavailable(f"database unavailable: {first_line(exc)}") from exc
    except psycopg.Error as exc:
        raise other(f"{what}: {first_line(exc)}") from exc
