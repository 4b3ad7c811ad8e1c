"""Apply the shipped SQL migrations, each once, under an advisory lock.

Theory of operation: a migration is a ``NNNN_name.sql`` file in ``sql/migrations``
(``fusillade/_sql/migrations`` in a wheel). Files are applied in name order, each in its
own transaction together with the row that records it in ``fusillade_migrations``
(name, sha256 of the file's bytes, time). Each of those transactions first takes a
transaction-level advisory lock with a fixed key (``MIGRATION_LOCK_KEY``), before
anything else, even before the bookkeeping table is created, and only then reads what is
applied and applies the first file that is not: a second process that starts at the
same moment waits on the lock, then finds everything recorded and applies nothing. A
failing file rolls back alone; the files before it stay applied. The lock is never a
session lock, which through PgBouncer in transaction pooling would be taken on one
server connection, released (or not) on another, and left held by an idle one.

Applied files are append-only. Before applying anything the migrator checks the record
against the disk and refuses (``MigrationError`` naming the file) when an applied file
changed or disappeared, or when a pending file sorts before one already applied.

The bookkeeping statements are constants here rather than files in ``sql/queries``:
they create and read the table the rest of the schema's history is recorded in, so
they must not depend on any migration, and none of them is built from strings.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
import psycopg
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from fusillade.errors import MigrationError, StoreUnavailable
from fusillade.store.errors import first_line, translate_errors
from fusillade.store.sqlfiles import sql_root

# The two-int4 form of advisory locks: a key space of its own (objsubid 2 in pg_locks), so
# it cannot collide with single-bigint keys such as the per-batch hashes of lock_batch.sql.
# 0x66757369 is "fusi" in ASCII; the second number says which of fusillade's locks it is.
MIGRATION_LOCK_KEY = (0x66757369, 1)

# Unless the conninfo says otherwise: a server that does not answer fails in seconds.
_CONNECT_TIMEOUT_S = 10

_CREATE_TABLE = b"""
CREATE TABLE IF NOT EXISTS fusillade_migrations (
    name       text        PRIMARY KEY,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""
_TABLE_EXISTS = "SELECT to_regclass('fusillade_migrations') IS NOT NULL"
_SELECT_APPLIED = "SELECT name, checksum FROM fusillade_migrations ORDER BY name"
_INSERT_APPLIED = "INSERT INTO fusillade_migrations (name, checksum) VALUES (%s, %s)"
_LOCK = "SELECT pg_advisory_xact_lock(%s, %s)"


@attrs.frozen
class Migration:
    """One migration file: ``name`` is the file's stem (``0001_initial``)."""

    name: str
    path: Path
    checksum: str

    def read_sql(self) -> bytes:
        return self.path.read_bytes()


def discover(directory: Path | None = None) -> list[Migration]:
    """The migration files of ``directory`` (default: the shipped ones), in name order."""
    directory = directory if directory is not None else sql_root() / "migrations"
    if not directory.is_dir():
        raise MigrationError(f"migrations directory {directory} does not exist")
    return [
        Migration(name=p.stem, path=p, checksum=hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(directory.glob("*.sql"))
    ]


def migrate(target: str | psycopg.Connection[Any], *, directory: Path | None = None) -> list[str]:
    """Apply the pending migrations; safe when several processes do it at once.

    Args:
        target: a conninfo string or URL, or an open connection that is not inside a
            transaction (it is left open, in its original autocommit mode).
        directory: the migrations to apply; default: the shipped ``sql/migrations``.

    Returns:
        The names of the files applied, in order; empty when the database was up to date.

    Raises:
        MigrationError: an applied file changed or is missing, a pending file sorts before
            an applied one, or a file failed (its transaction is rolled back).
        StoreUnavailable: the database cannot be reached or the connection was lost.
    """
    migrations = discover(directory)
    done: list[str] = []
    with (
        _connection(target) as conn,
        translate_errors(MigrationError, "cannot read or record migrations"),
    ):
        while True:
            with conn.transaction():
                conn.execute(_LOCK, MIGRATION_LOCK_KEY)
                conn.execute(_CREATE_TABLE)
                todo = _check(migrations, _applied(conn))
            if not todo:
                return done
            migration = todo[0]
            try:
                with conn.transaction():
                    conn.execute(_LOCK, MIGRATION_LOCK_KEY)
                    if migration.name in _applied(conn):
                        continue  # another process applied it since the check above
                    conn.execute(migration.read_sql())
                    conn.execute(_INSERT_APPLIED, (migration.name, migration.checksum))
            except psycopg.Error as exc:
                if conn.broken:
                    raise StoreUnavailable(
                        f"lost the database connection while applying {migration.path.name}: "
                        f"{first_line(exc)}"
                    ) from exc
                raise MigrationError(
                    f"migration {migration.path.name} failed: {first_line(exc)}"
                ) from exc
            done.append(migration.name)


def pending(target: str | psycopg.Connection[Any], *, directory: Path | None = None) -> list[str]:
    """The names ``migrate`` would apply now (read-only, takes no lock).

    Raises:
        MigrationError: as ``migrate`` does when the record and the disk disagree.
        StoreUnavailable: the database cannot be reached.
    """
    migrations = discover(directory)
    with (
        _connection(target) as conn,
        translate_errors(MigrationError, "cannot read or record migrations"),
    ):
        exists = conn.execute(_TABLE_EXISTS).fetchone()
        applied = _applied(conn) if exists and exists[0] else {}
        return [m.name for m in _check(migrations, applied)]


def _applied(conn: psycopg.Connection[Any]) -> dict[str, str]:
    rows = conn.execute(_SELECT_APPLIED).fetchall()
    return {str(name): str(checksum) for name, checksum in rows}


def _check(migrations: list[Migration], applied: dict[str, str]) -> list[Migration]:
    """The migrations still to apply, after checking the applied ones against the disk."""
    on_disk = {m.name: m for m in migrations}
    for name in sorted(applied):
        if name not in on_disk:
            raise MigrationError(
                f"migration {name}.sql was applied to this database but is missing from disk "
                "(is this an older fusillade than the one that migrated the database?)"
            )
        if on_disk[name].checksum != applied[name]:
            raise MigrationError(
                f"migration {on_disk[name].path.name} was edited after it was applied "
                "(its checksum changed); shipped migrations must never change"
            )
    todo = [m for m in migrations if m.name not in applied]
    latest = max(applied, default=None)
    if latest is not None and todo and todo[0].name < latest:
        raise MigrationError(
            f"migration {todo[0].path.name} is not applied but sorts before the applied "
            f"{latest}; new migrations must sort after every shipped one"
        )
    return todo


@contextmanager
def _connection(target: str | psycopg.Connection[Any]) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection: a new one for a conninfo, else the caller's, restored after."""
    if isinstance(target, str):
        try:
            conninfo = target
            if "connect_timeout" not in conninfo_to_dict(target):
                conninfo = make_conninfo(target, connect_timeout=_CONNECT_TIMEOUT_S)
            # No server-side prepared statements: safe through PgBouncer's transaction
            # pooling (a statement run five times would otherwise be prepared).
            conn = psycopg.connect(conninfo, autocommit=True, prepare_threshold=None)
        except psycopg.Error as exc:
            raise StoreUnavailable(
                f"cannot connect to the database {describe_conninfo(target)}: {first_line(exc)}"
            ) from exc
        with conn:
            yield conn
        return
    if target.info.transaction_status != pq.TransactionStatus.IDLE:
        raise MigrationError("migrate needs a connection that is not inside a transaction")
    was_autocommit = target.autocommit
    target.autocommit = True
    try:
        yield target
    finally:
        if not target.closed and target.info.transaction_status == pq.TransactionStatus.IDLE:
            target.autocommit = was_autocommit


def describe_conninfo(conninfo: str) -> str:
    """``dbname on host:port`` for messages: never the password or other parameters."""
    try:
        params = conninfo_to_dict(conninfo)
    except psycopg.Error:
        return "(unparsable connection string)"
    host = str(params.get("host") or "the default host")
    port = params.get("port")
    where = f"{host}:{port}" if port else host
    return f"{params.get('dbname') or '(default database)'} on {where}"
