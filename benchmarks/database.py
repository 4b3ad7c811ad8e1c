"""Databases for the scenarios: a fresh one per scenario run, and bulk seeding in SQL.

The server is ``$DATABASE_URL`` (its maintenance database) or the PostgreSQL on
127.0.0.1:5432 as ``postgres``. Each scenario run gets ``CREATE DATABASE bench_<x>``,
migrated by fusillade itself, dropped ``WITH (FORCE)`` afterwards.

Seeding large inputs goes around the library on purpose (``generate_series`` rather than
a million ``RequestTemplate`` objects): P4 measures ingest; the other scenarios only
need the rows to exist. Rows are consistent with sql/migrations/0001_initial.sql.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit
from uuid import UUID

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from fusillade.ids import uuid7

LOCAL_URL = "postgresql://postgres@127.0.0.1:5432/postgres"

INSERT_FILE = """
INSERT INTO files (id, owner, filename, purpose, bytes, line_count, models, created_at)
VALUES (%(id)s, %(owner)s, %(filename)s, 'batch', %(bytes)s, %(lines)s,
        ARRAY[%(model)s]::text[], %(now)s)
"""
# Lines first..last of a file; the body is request_body(i) of benchmarks.common.
INSERT_TEMPLATES = """
INSERT INTO request_templates (file_id, line_number, custom_id, method, path, model, body)
SELECT %(file_id)s, g, 'req-' || lpad(g::text, 8, '0'), 'POST', '/v1/chat/completions',
       %(model)s,
       '{"model":"bench-model","messages":[{"role":"user","content":"Say hello (request '
       || g || ')"}],"max_tokens":16}'
FROM generate_series(%(first)s::int, %(last)s::int) AS g
"""
# Mark every request of a batch completed with a canned body (P5's setup, not the daemon).
COMPLETE_ALL = """
UPDATE requests
SET state = 'completed', attempts = 1, daemon_id = %(daemon)s,
    claimed_at = %(now)s, started_at = %(now)s,
    finished_at = %(now)s + line_number * interval '1 microsecond',
    response_status = 200, response_body = %(body)s, response_body_json = true,
    input_tokens = 12, output_tokens = 9
WHERE batch_id = %(batch_id)s
"""
TEMPLATE_BYTES = 120  # roughly the body of one seeded template, for files.bytes


def admin_url() -> tuple[str, str]:
    """The maintenance URL of the server to use, and where it came from."""
    env = os.environ.get("DATABASE_URL")
    if env:
        return env, "DATABASE_URL"
    return LOCAL_URL, "PostgreSQL on 127.0.0.1:5432"


def url_with_database(url: str, dbname: str) -> str:
    if url.startswith(("postgresql://", "postgres://")):
        return urlunsplit(urlsplit(url)._replace(path="/" + quote(dbname)))
    return make_conninfo(url, dbname=dbname)


def server_version(url: str) -> str:
    with psycopg.connect(url, connect_timeout=5) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    assert row is not None
    return str(row[0])


def check_server(url: str) -> None:
    with psycopg.connect(url, connect_timeout=5) as conn:
        conn.execute("SELECT 1")


@contextlib.contextmanager
def fresh_database(admin: str, label: str, *, keep: bool = False) -> Iterator[str]:
    """A new empty database (migrated by whoever opens it first); dropped afterwards."""
    name = f"bench_{label}_{secrets.token_hex(3)}".lower()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield url_with_database(admin, name)
    finally:
        if not keep:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )


def migrate(url: str) -> None:
    from fusillade.store.migrate import migrate as apply

    apply(url)


def now() -> datetime:
    return datetime.now(UTC)


def seed_file(
    conn: psycopg.Connection[Any], lines: int, *, owner: str = "default", chunk: int = 500_000
) -> UUID:
    """An input file of ``lines`` templates, inserted with ``generate_series``."""
    file_id = uuid7()
    conn.execute(
        INSERT_FILE,
        {
            "id": file_id,
            "owner": owner,
            "filename": f"seeded-{lines}.jsonl",
            "bytes": lines * TEMPLATE_BYTES,
            "lines": lines,
            "model": "bench-model",
            "now": now(),
        },
    )
    for first in range(1, lines + 1, chunk):
        conn.execute(
            INSERT_TEMPLATES,
            {
                "file_id": file_id,
                "first": first,
                "last": min(lines, first + chunk - 1),
                "model": "bench-model",
            },
        )
        conn.commit()
    return file_id


def seed_batch(url: str, lines: int, *, window: timedelta = timedelta(hours=24)) -> UUID:
    """A batch of ``lines`` pending requests: seeded file, then the library's create_batch."""
    from fusillade.store.interface import BatchSpec
    from fusillade.store.postgres import PostgresRepository

    with psycopg.connect(url) as conn:
        file_id = seed_file(conn, lines)
    with PostgresRepository(url, statement_timeout_ms=3_600_000) as repo:
        view = repo.create_batch(
            "default",
            BatchSpec(file_id, "/v1/chat/completions", "24h", window, None, None),
            now=now(),
        )
    return view.record.id


def complete_all(url: str, batch_id: UUID, body: str) -> None:
    """Every request of the batch completed, in one UPDATE; then VACUUM ANALYZE."""
    with psycopg.connect(url) as conn:
        conn.execute(
            COMPLETE_ALL,
            {"daemon": UUID(int=1), "now": now(), "body": body, "batch_id": batch_id},
        )
        conn.commit()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE) requests")
