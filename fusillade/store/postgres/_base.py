"""The pool, one short transaction per call, and LISTEN: what every part builds on."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Self
from uuid import UUID

import psycopg
import psycopg.errors
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from fusillade.core.models import (
    BatchRecord,
)
from fusillade.errors import NotFound
from fusillade.serde import structure
from fusillade.store.errors import translate_errors
from fusillade.store.sqlfiles import Queries, load_queries

WORK_CHANNEL = "fusillade_work"
CANCEL_CHANNEL = "fusillade_cancel"


def connection_kwargs(statement_timeout_ms: int) -> dict[str, Any]:
    """Settings for every connection: timeouts, keepalives, no server-side prepares, no JIT.

    JIT never pays for these short indexed queries, and when the planner overestimates a
    query's cost it compiles one anyway: 40 ms or more per page of a download (P5).
    """
    return {
        "prepare_threshold": None,
        "row_factory": dict_row,
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 5,
        "keepalives_count": 3,
        "connect_timeout": 10,
        "options": f"-c statement_timeout={statement_timeout_ms} -c jit=off",
    }


class PostgresBase:
    """Connections and queries; the repository's parts are its subclasses."""

    def __init__(
        self,
        conninfo: str,
        *,
        min_size: int = 1,
        max_size: int = 8,
        statement_timeout_ms: int = 30_000,
        queries: Queries | None = None,
    ) -> None:
        self.conninfo = conninfo
        self.q = queries or load_queries()
        self.pool: ConnectionPool[psycopg.Connection[dict[str, Any]]] = ConnectionPool(
            conninfo,
            min_size=min_size,
            max_size=max_size,
            kwargs=connection_kwargs(statement_timeout_ms),
            open=False,
            timeout=30.0,
            name="fusillade",
        )

    def open(self, *, wait: bool = True, timeout: float = 30.0) -> None:
        with translate_errors():
            self.pool.open(wait=wait, timeout=timeout)

    def close(self) -> None:
        self.pool.close()

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[psycopg.Cursor[dict[str, Any]]]:
        """A cursor inside one transaction (committed on success, rolled back on error)."""
        with translate_errors(), self.pool.connection() as conn, conn.transaction():
            yield conn.cursor()

    def listen(self) -> PostgresListener:
        """A dedicated connection that waits for wake-up notifications."""
        with translate_errors():
            return PostgresListener(self.conninfo, self.q.listen)

    def ping(self, timeout: float = 5.0) -> None:
        """Raise ``StoreUnavailable`` unless a trivial query succeeds.

        Waits at most ``timeout`` seconds for a pooled connection (not the pool's 30 s):
        while the server is down, the readiness probe answers instead of hanging.
        """
        with translate_errors(), self.pool.connection(timeout=timeout) as conn:
            conn.execute("SELECT 1")

    def _read_batch(
        self, cur: psycopg.Cursor[dict[str, Any]], owner: str | None, batch_id: UUID
    ) -> BatchRecord:
        row = cur.execute(self.q.get_batch, {"id": batch_id, "owner": owner}).fetchone()
        if row is None:
            raise NotFound("batch", batch_id)
        return structure(row, BatchRecord)


class PostgresListener:
    """LISTEN on one connection outside the pool; ``wait`` blocks up to ``timeout``."""

    def __init__(self, conninfo: str, listen_sql: str) -> None:
        kwargs = connection_kwargs(0)
        kwargs.pop("row_factory")
        self._conn = psycopg.connect(conninfo, autocommit=True, **kwargs)
        self._conn.execute(listen_sql)

    def wait(self, timeout: float) -> list[str]:
        """Channels notified within ``timeout`` seconds (empty when none)."""
        with translate_errors():
            return [n.channel for n in self._conn.notifies(timeout=timeout, stop_after=1)]

    def close(self) -> None:
        self._conn.close()
