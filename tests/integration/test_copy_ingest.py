"""A file's COPY, formatted a block at a time: every byte kept, all or nothing."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from fusillade.core.models import RequestTemplate
from fusillade.errors import StoreError
from fusillade.store.postgres import PostgresRepository, _copy

T0 = datetime(2026, 1, 1, tzinfo=UTC)
NASTY = [
    "plain",
    "tab\tnew\nline\r\nand\rcr",
    "back\\slash \\N \\t \\\\",
    "\\N",
    "\x01\x1f\x7f control",
    "ünïcödé ✓ 🚀 \u2028",
    "'; DROP TABLE request_templates; --",
]


@pytest.fixture
def repo(database_url: str) -> Iterator[PostgresRepository]:
    with PostgresRepository(database_url, max_size=4) as r:
        yield r


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of 3 rows: a few rows cross every boundary."""
    monkeypatch.setattr(_copy, "BLOCK_ROWS", 3)


def nasty_templates(n: int) -> list[RequestTemplate]:
    return [
        RequestTemplate(
            custom_id=f"{i}:{NASTY[i % len(NASTY)]}",
            model=NASTY[(i + 1) % len(NASTY)],
            body=f'{{"model":"m","s":"{NASTY[i % len(NASTY)]!r}"}}',
            path="/v1/embeddings" if i % 2 else "/v1/chat/completions",
            endpoint=NASTY[(i + 2) % len(NASTY)] if i % 3 == 0 else "",
            api_key=NASTY[(i + 3) % len(NASTY)] if i % 4 == 0 else None,
        )
        for i in range(n)
    ]


def stored(database_url: str, file_id: object) -> list[dict[str, Any]]:
    with psycopg.connect(database_url, row_factory=psycopg.rows.dict_row) as conn:
        return conn.execute(
            "SELECT line_number, custom_id, endpoint, method, path, model, body, api_key "
            "FROM request_templates WHERE file_id = %s ORDER BY line_number",
            (file_id,),
        ).fetchall()


@pytest.mark.parametrize("n", [0, 1, 3, 8])
def test_every_field_is_stored_byte_for_byte_in_order(
    repo: PostgresRepository, database_url: str, n: int
) -> None:
    templates = nasty_templates(n)
    f = repo.create_file("alice", "in", iter(templates), now=T0)
    assert f.line_count == n
    assert f.bytes == sum(len(t.body.encode()) for t in templates)
    rows = stored(database_url, f.id)
    assert [r["line_number"] for r in rows] == list(range(1, n + 1))
    for row, t in zip(rows, templates, strict=True):
        assert (row["custom_id"], row["endpoint"], row["method"], row["path"]) == (
            t.custom_id,
            t.endpoint,
            t.method,
            t.path,
        )
        assert (row["model"], row["body"], row["api_key"]) == (t.model, t.body, t.api_key)


class Broken(Exception):
    pass


@pytest.mark.parametrize("fail_at", [0, 2, 7])
def test_a_failing_stream_stores_nothing_and_raises_its_error(
    repo: PostgresRepository, database_url: str, fail_at: int
) -> None:
    def stream() -> Iterator[RequestTemplate]:
        yield from nasty_templates(fail_at)
        raise Broken(f"line {fail_at + 1}")

    with pytest.raises(Broken, match=f"line {fail_at + 1}"):
        repo.create_file("alice", "in", stream(), now=T0)
    assert repo.list_files("alice").items == ()
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM request_templates").fetchone() == (0,)
    # The connection went back to the pool in a usable state.
    assert repo.create_file("alice", "ok", nasty_templates(9), now=T0).line_count == 9


def test_nul_is_a_store_error_and_stores_nothing(repo: PostgresRepository) -> None:
    templates = [*nasty_templates(10), RequestTemplate("a\x00", "m", "{}"), *nasty_templates(5)]
    with pytest.raises(StoreError, match="NUL"):
        repo.create_file("alice", "in", templates, now=T0)
    assert repo.list_files("alice").items == ()


def test_a_database_error_is_a_store_error(
    repo: PostgresRepository, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = _copy.copy_templates

    def wrong_sql(cur: Any, sql: str, *args: Any, **kwargs: Any) -> Any:
        return real(cur, sql.replace("api_key", "no_such_column"), *args, **kwargs)

    monkeypatch.setattr("fusillade.store.postgres._files.copy_templates", wrong_sql)
    with pytest.raises(StoreError, match="no_such_column"):
        repo.create_file("alice", "in", iter(nasty_templates(20)), now=T0)
    assert repo.list_files("alice").items == ()
