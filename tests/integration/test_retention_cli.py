"""``fusillade purge --older-than D [--dry-run]``: the dry run prints what would go and
removes nothing; the purge removes it; a bad duration is a usage mistake (2)."""

from __future__ import annotations

from datetime import timedelta

import psycopg
from conftest import RunFusillade

from fusillade.core.models import RequestTemplate
from fusillade.store.interface import BatchSpec
from fusillade.store.postgres import PostgresRepository


def _rows(conn: psycopg.Connection[tuple[int]]) -> tuple[int, int]:
    requests = conn.execute("SELECT count(*) FROM requests").fetchone()
    templates = conn.execute("SELECT count(*) FROM request_templates").fetchone()
    assert requests is not None and templates is not None
    return requests[0], templates[0]


def test_purge_dry_run_then_purge(database_url: str, run_fusillade: RunFusillade) -> None:
    with (
        PostgresRepository(database_url) as repo,
        psycopg.connect(database_url, autocommit=True) as conn,
    ):
        now = repo.database_time()
        assert now is not None
        then = now - timedelta(days=4)
        ts = [RequestTemplate(f"c{i}", "m", "{}", "/v1/chat/completions") for i in range(4)]
        f = repo.create_file("alice", "in.jsonl", ts, now=then)
        spec = BatchSpec(f.id, "/v1/chat/completions", "24h", timedelta(hours=24))
        b = repo.create_batch("alice", spec, now=then).record.id
        conn.execute(
            "UPDATE requests SET state = 'canceled', finished_at = %s, "
            "failure_reason = 'cancelled' WHERE batch_id = %s",
            (then, b),
        )
        gone = repo.create_file("alice", "gone.jsonl", ts[:2], now=then)
        repo.delete_file("alice", gone.id, now=then)
        env = {"FUSILLADE_DATABASE_URL": database_url}

        dry = run_fusillade(["purge", "--older-than", "2d", "--dry-run"], env=env)
        assert dry.returncode == 0, dry.stderr
        assert "would remove (dry run):" in dry.stdout
        assert "finished batches purged: 1 (4 requests)" in dry.stdout
        assert "deleted files emptied: 1 (2 templates)" in dry.stdout
        assert _rows(conn) == (4, 6)  # nothing removed

        kept = run_fusillade(["purge", "--older-than", "5d"], env=env)
        assert kept.returncode == 0, kept.stderr
        assert "finished batches purged: 0 (0 requests)" in kept.stdout
        assert _rows(conn) == (4, 4)  # the deleted file's content went all the same

        done = run_fusillade(["purge", "--older-than", "2d"], env=env)
        assert done.returncode == 0, done.stderr
        assert "finished batches purged: 1 (4 requests)" in done.stdout
        assert _rows(conn) == (0, 4)  # the live input file keeps its templates
        assert repo.get_batch("alice", b, now=now).counts.canceled == 4

        bad = run_fusillade(["purge", "--older-than", "soon"], env=env)
        assert bad.returncode == 2
        assert "Traceback" not in bad.stderr
