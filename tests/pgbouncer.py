"""Test helper: a real PgBouncer in front of a test database, in session or transaction pooling.

``running_pgbouncer(database_url, mode, workdir)`` writes a configuration into
``workdir`` (trust authentication, a free loopback port, the one database of
``database_url``), starts ``pgbouncer`` in the foreground, waits until a connection
through it answers (polling, bounded), yields a ``PgBouncer`` whose ``url`` goes through
it, and stops it afterwards. When no ``pgbouncer`` binary is installed (Debian package
``pgbouncer``; ``.ci/run`` installs it), tests that need one are skipped with that reason.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import attrs
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

MODES = ("session", "transaction")


def pgbouncer_binary() -> str | None:
    return shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.access(p, os.X_OK)), None
    )


@attrs.frozen
class PgBouncer:
    """A running PgBouncer: ``url`` reaches the test database through it."""

    url: str
    mode: str
    log: Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _ini_value(value: str) -> str:
    # libpq-style quoting for the [databases] connection string
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


@contextmanager
def running_pgbouncer(database_url: str, mode: str, workdir: Path) -> Iterator[PgBouncer]:
    binary = pgbouncer_binary()
    if binary is None:
        pytest.skip("pgbouncer is not installed (Debian package pgbouncer; .ci/run installs it)")
    params = conninfo_to_dict(database_url)
    dbname = str(params["dbname"])
    user = str(params.get("user") or "postgres")
    target = [f"dbname={_ini_value(dbname)}", f"user={_ini_value(user)}"]
    for key in ("host", "port", "password"):
        if params.get(key):
            target.append(f"{key}={_ini_value(str(params[key]))}")
    port = _free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    users = workdir / "users.txt"
    users.write_text(f'"{user}" ""\n')
    ini = workdir / "pgbouncer.ini"
    ini.write_text(
        "[databases]\n"
        f"{dbname} = {' '.join(target)}\n"
        "[pgbouncer]\n"
        "listen_addr = 127.0.0.1\n"
        f"listen_port = {port}\n"
        "unix_socket_dir =\n"
        "auth_type = trust\n"
        f"auth_file = {users}\n"
        f"pool_mode = {mode}\n"
        "max_client_conn = 200\n"
        "default_pool_size = 20\n"
    )
    # PgBouncer refuses to run as root; it reads its files before switching user.
    command = [binary, *(["-u", "nobody"] if os.geteuid() == 0 else []), str(ini)]
    log = workdir / "pgbouncer.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    bouncer = PgBouncer(f"postgresql://{quote(user)}@127.0.0.1:{port}/{quote(dbname)}", mode, log)
    try:
        _wait_ready(proc, bouncer)
        yield bouncer
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_ready(proc: subprocess.Popen[bytes], bouncer: PgBouncer, timeout: float = 15) -> None:
    """Return once a query through PgBouncer answers; fail if it exits or takes too long."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            pytest.fail(f"pgbouncer exited with {proc.returncode}: {bouncer.log.read_text()}")
        try:
            with psycopg.connect(bouncer.url, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                pytest.fail(f"pgbouncer did not answer in {timeout}s: {bouncer.log.read_text()}")
            time.sleep(0.02)  # the polling interval of a bounded wait, not a wait by itself


@pytest.fixture(name="pgbouncer", params=MODES)
def pgbouncer_fixture(
    request: pytest.FixtureRequest, database_url: str, tmp_path: Path
) -> Iterator[PgBouncer]:
    """A PgBouncer in front of ``database_url``, once per pooling mode."""
    with running_pgbouncer(database_url, request.param, tmp_path / "pgbouncer") as bouncer:
        yield bouncer
