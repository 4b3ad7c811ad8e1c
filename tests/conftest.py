"""Test harness: Hypothesis profiles and the PostgreSQL databases tests run against.

The server, chosen once per session when a test first asks for a database:
1. ``DATABASE_URL`` when set (never a fallback: an unreachable one fails the tests);
2. else the PostgreSQL on 127.0.0.1:5432 as ``postgres``, when it answers;
3. else an embedded PostgreSQL (``fusillade.embedded``) in a temporary directory.

Once per server and migration set, a template database ``fusillade_tpl_<hash>`` is built
with the migrator (the hash covers the migration files and the migrator). Each test that
asks for ``database_url`` gets its own copy (``CREATE DATABASE ... TEMPLATE``, a few tens
of milliseconds), dropped afterwards. See docs/testing.md.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import attrs
import psycopg
import pytest
from hypothesis import settings
from psycopg import sql
from psycopg.conninfo import make_conninfo

import fusillade.store.migrate
from fusillade.store.migrate import discover, migrate

# --- Hypothesis -------------------------------------------------------------------------

settings.register_profile("dev", deadline=timedelta(seconds=1))
settings.register_profile("ci", max_examples=300, derandomize=True, deadline=None, print_blob=True)


def _profile() -> str:
    chosen = os.environ.get("HYPOTHESIS_PROFILE")
    if chosen:
        return chosen
    ci = os.environ.get("CI", "").strip().lower()
    return "ci" if ci not in ("", "0", "false", "no") else "dev"


settings.load_profile(_profile())


# --- the database server ----------------------------------------------------------------

LOCAL_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
# Serialises template builds between concurrent sessions (e.g. pytest-xdist workers).
# Two-int4 advisory key, beside the migrator's (0x66757369, 1) (fusillade.store.migrate).
_TEMPLATE_LOCK_KEY = (0x66757369, 1000)
_SERVER_KEY = pytest.StashKey[str]()


@attrs.frozen
class DatabaseServer:
    """The server the tests use: ``admin_url`` connects to its maintenance database."""

    admin_url: str
    origin: str  # said in the terminal summary

    def url_for(self, dbname: str) -> str:
        return url_with_database(self.admin_url, dbname)


def url_with_database(url: str, dbname: str) -> str:
    """``url`` (a URL or a key=value conninfo) pointing at database ``dbname`` instead."""
    if url.startswith(("postgresql://", "postgres://")):
        return urlunsplit(urlsplit(url)._replace(path="/" + quote(dbname)))
    return make_conninfo(url, dbname=dbname)


def _answers(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=2):
            return True
    except psycopg.OperationalError:
        return False


@pytest.fixture(scope="session")
def database_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DatabaseServer]:
    env_url = os.environ.get("DATABASE_URL")
    if env_url:
        server = DatabaseServer(env_url, "DATABASE_URL")
    elif _answers(LOCAL_URL):
        server = DatabaseServer(LOCAL_URL, "PostgreSQL on 127.0.0.1:5432")
    else:
        from fusillade.embedded import start_embedded

        data_dir = tmp_path_factory.mktemp("embedded-pg") / "pg"
        with start_embedded(data_dir) as embedded:
            server = DatabaseServer(embedded.url, f"embedded PostgreSQL in {data_dir}")
            request.config.stash[_SERVER_KEY] = server.origin
            yield server
        return
    request.config.stash[_SERVER_KEY] = server.origin
    yield server


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    origin = terminalreporter.config.stash.get(_SERVER_KEY, None)
    if origin is not None:
        terminalreporter.write_line(f"database server: {origin}")


# --- databases --------------------------------------------------------------------------


def _template_name() -> str:
    digest = hashlib.sha256()
    for migration in discover():
        digest.update(migration.name.encode() + b"\0" + migration.checksum.encode() + b"\0")
    digest.update(Path(fusillade.store.migrate.__file__).read_bytes())
    return f"fusillade_tpl_{digest.hexdigest()[:16]}"


def _exists(admin: psycopg.Connection[tuple[object, ...]], dbname: str) -> bool:
    row = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone()
    return row is not None


def _drop(admin: psycopg.Connection[tuple[object, ...]], dbname: str) -> None:
    admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))


@pytest.fixture(scope="session")
def admin_url(database_server: DatabaseServer) -> str:
    """The server's maintenance database (for CREATE/DROP DATABASE and the like)."""
    return database_server.admin_url


@pytest.fixture(scope="session")
def template_database(database_server: DatabaseServer) -> str:
    """The name of the migrated template database, built once (reused across sessions)."""
    name = _template_name()
    with psycopg.connect(database_server.admin_url, autocommit=True) as admin:
        admin.execute("SELECT pg_advisory_lock(%s, %s)", _TEMPLATE_LOCK_KEY)
        try:
            if not _exists(admin, name):
                # Built under another name and renamed when complete, so an interrupted
                # build never leaves a half-migrated template behind.
                building = f"{name}_building"
                _drop(admin, building)
                admin.execute(
                    sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(
                        sql.Identifier(building)
                    )
                )
                migrate(database_server.url_for(building))
                admin.execute(
                    sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                        sql.Identifier(building), sql.Identifier(name)
                    )
                )
        finally:
            admin.execute("SELECT pg_advisory_unlock(%s, %s)", _TEMPLATE_LOCK_KEY)
    return name


@contextmanager
def _fresh_database(server: DatabaseServer, template: str) -> Iterator[str]:
    name = f"test_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(server.admin_url, autocommit=True) as admin:
        admin.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template)
            )
        )
    try:
        yield server.url_for(name)
    finally:
        with psycopg.connect(server.admin_url, autocommit=True) as admin:
            _drop(admin, name)


@pytest.fixture
def database_url(database_server: DatabaseServer, template_database: str) -> Iterator[str]:
    """A new database with every migration applied, dropped after the test."""
    with _fresh_database(database_server, template_database) as url:
        yield url


@pytest.fixture
def empty_database_url(database_server: DatabaseServer) -> Iterator[str]:
    """A new database with nothing in it (not even the migrations), dropped after the test."""
    with _fresh_database(database_server, "template0") as url:
        yield url
