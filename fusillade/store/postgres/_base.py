"""The pool, one short transaction per call, and LISTEN: what every part builds on.

Session settings (statement timeout, JIT off) are given to each transaction with
``SET LOCAL``, sent with its ``BEGIN`` in one round trip (``begin.sql``), never as a
startup parameter: PgBouncer refuses ``options`` (1.20+) or drops it silently
(``ignore_startup_parameters``), and a connection-level ``SET`` would stick to whichever
server connection PgBouncer lent in transaction pooling. Pooled connections are in
autocommit mode so that the driver sends no ``BEGIN`` of its own; ``_tx`` is the only
way a transaction starts (docs/deployment.md, "PgBouncer").
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import datetime
from typing import Any, Self
from uuid import UUID, uuid4

import psycopg
import psycopg.errors
from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from fusillade.core.idempotency import IdempotencyKey, check_replay, expired_before
from fusillade.core.models import (
    BatchRecord,
)
from fusillade.errors import Conflict, NotFound
from fusillade.serde import structure
from fusillade.store.errors import translate_errors
from fusillade.store.sqlfiles import Queries, load_queries

WORK_CHANNEL = "fusillade_work"
CANCEL_CHANNEL = "fusillade_cancel"
PROBE_CHANNEL = "fusillade_probe"


def connection_kwargs() -> dict[str, Any]:
    """Settings for every connection: keepalives, no server-side prepares, autocommit.

    Only client-side (libpq) parameters: nothing here is a startup parameter a pooler
    could refuse. Server-side prepared statements are off (``prepare_threshold=None``),
    which is also what makes PgBouncer's transaction pooling safe without its
    ``max_prepared_statements``. Autocommit: ``_tx`` sends ``BEGIN`` itself, with the
    session settings (``begin.sql``).
    """
    return {
        "prepare_threshold": None,
        "row_factory": dict_row,
        "autocommit": True,
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 5,
        "keepalives_count": 3,
        "connect_timeout": 10,
    }


def begin_statement(template: str, statement_timeout_ms: int) -> str:
    """``begin.sql`` with the statement timeout in it (a literal: SET takes no parameters).

    JIT is off in every transaction: it never pays for these short indexed queries, and
    when the planner overestimates a query's cost it compiles one anyway: 40 ms or more
    per page of a download (P5).
    """
    if statement_timeout_ms < 0:
        raise ValueError(f"statement_timeout_ms must be >= 0, not {statement_timeout_ms}")
    composed = sql.SQL(template).format(statement_timeout=sql.Literal(int(statement_timeout_ms)))
    return composed.as_string()


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
        create_chunk: int = 50_000,
    ) -> None:
        self.conninfo = conninfo
        # Requests created per statement by create_batch: about 1.5 s here, well inside
        # the statement timeout (one statement for a million lines took about 30 s).
        self.create_chunk = create_chunk
        self.q = queries or load_queries()
        self._begin = begin_statement(self.q.begin, statement_timeout_ms)
        self.pool: ConnectionPool[psycopg.Connection[dict[str, Any]]] = ConnectionPool(
            conninfo,
            min_size=min_size,
            max_size=max_size,
            kwargs=connection_kwargs(),
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
        """A cursor inside one transaction (committed on success, rolled back on error).

        The transaction starts with ``begin.sql`` (``BEGIN`` and the ``SET LOCAL``
        settings in one round trip); the pool's connection context commits it, or rolls
        it back when the block raises.
        """
        with translate_errors(), self.pool.connection() as conn:
            conn.execute(self._begin)
            yield conn.cursor()

    def listen(self) -> PostgresListener:
        """A dedicated connection that waits for wake-up notifications.

        Once it listens, a probe notification is sent to it through the pool. Until
        something arrives (``PostgresListener.heard``), it is not known that
        notifications reach it: through PgBouncer in transaction pooling they never do
        (the LISTENing server connection goes back to PgBouncer's pool after the
        statement), and the caller must then rely on polling.

        Raises:
            StoreUnavailable, StoreError: the database could not be reached.
        """
        with translate_errors():
            listener = PostgresListener(self.conninfo, self.q.listen)
        try:
            with self._tx() as cur:
                cur.execute(self.q.notify, {"channel": PROBE_CHANNEL, "payload": uuid4().hex})
        except BaseException:
            listener.close()
            raise
        return listener

    def ping(self, timeout: float = 5.0) -> None:
        """Raise ``StoreUnavailable`` unless a trivial query succeeds.

        Waits at most ``timeout`` seconds for a pooled connection (not the pool's 30 s):
        while the server is down, the readiness probe answers instead of hanging.
        """
        with translate_errors(), self.pool.connection(timeout=timeout) as conn:
            conn.execute("SELECT 1")

    def database_time(self) -> datetime:
        """The database server's clock (``clock_timestamp()``), which every process of a
        deployment takes its times from (``fusillade.runtime.clock``)."""
        with self._tx() as cur:
            row = cur.execute(self.q.database_time).fetchone()
        assert row is not None
        now: datetime = row["now"]
        return now

    def _claim_key(
        self,
        cur: psycopg.Cursor[dict[str, Any]],
        owner: str,
        idempotency: IdempotencyKey,
        object_id: UUID,
        now: datetime,
    ) -> UUID | None:
        """Remember ``idempotency`` for ``object_id`` in this transaction; ``None`` when
        it is now this transaction's, else the id of the object it created before.

        A concurrent transaction holding the same key makes this wait for its end
        (``claim_idempotency_key.sql``).

        Raises:
            Conflict: the key is live for a different request.
        """
        before = expired_before(now)
        params = {"owner": owner, "key": idempotency.key, "expired_before": before}
        claimed = cur.execute(
            self.q.claim_idempotency_key,
            {
                **params,
                "fingerprint": idempotency.fingerprint,
                "object_id": object_id,
                "created_at": now,
            },
        ).fetchone()
        if claimed is not None:
            return None
        row = cur.execute(self.q.get_idempotency_key, params).fetchone()
        if row is None:  # expired between the two statements, and forgotten
            raise Conflict("the Idempotency-Key expired while this request ran; try again")
        check_replay(idempotency, row["fingerprint"])
        stored: UUID = row["object_id"]
        return stored

    def _read_batch(
        self, cur: psycopg.Cursor[dict[str, Any]], owner: str | None, batch_id: UUID
    ) -> BatchRecord:
        row = cur.execute(self.q.get_batch, {"id": batch_id, "owner": owner}).fetchone()
        if row is None:
            raise NotFound("batch", batch_id)
        return structure(row, BatchRecord)


class PostgresListener:
    """LISTEN on one connection outside the pool; ``wait`` blocks up to ``timeout``.

    ``heard`` turns true with the first notification (any: the probe ``listen`` sends,
    or real work), which proves that notifications reach this connection.
    """

    def __init__(self, conninfo: str, listen_sql: str) -> None:
        kwargs = connection_kwargs()
        kwargs.pop("row_factory")
        self._conn = psycopg.connect(conninfo, **kwargs)
        self._conn.execute(listen_sql)
        self.heard = False

    def wait(self, timeout: float) -> list[str]:
        """Channels notified within ``timeout`` seconds (empty when none).

        The probe channel counts for ``heard`` and is not returned.
        """
        with translate_errors():
            notified = [n.channel for n in self._conn.notifies(timeout=timeout, stop_after=1)]
        self.heard = self.heard or bool(notified)
        return [c for c in notified if c != PROBE_CHANNEL]

    def close(self) -> None:
        self._conn.close()
