"""CPU seconds (user + system) of everything a measured run makes work (P1c, issue 16).

- the measured process and its worker children: ``os.wait4``'s rusage of the process
  (``Finished.cpu_seconds``), which on Linux includes the children it reaped itself
  (``fusillade run --workers N`` waits for its workers);
- its PostgreSQL backends: the server's processes whose title names the run's database
  (``postgres: 15/main: postgres bench_p1_x 127.0.0.1(...) idle``), sampled with psutil
  while the run goes (a backend gone between two samples loses at most one interval);
- the server's background processes (checkpointer, background writer, walwriter,
  autovacuum): their delta over the run. The server is shared (other databases, other
  users of the machine), so this part is an upper bound;
- the upstream (nginx master and worker): its delta over the run, reported apart.

Without psutil, or when PostgreSQL is not on this machine, the PostgreSQL parts are None.
"""

from __future__ import annotations

import contextlib
from typing import Any

from psycopg.conninfo import conninfo_to_dict

BACKGROUND = (
    "checkpointer",
    "background writer",
    "walwriter",
    "autovacuum",
    "archiver",
    "logical replication",
    "walsender",
)


def tree_cpu(pid: int | None) -> float | None:
    """CPU seconds so far of ``pid``, of the children it reaped and of its living
    descendants (None without psutil)."""
    if pid is None:
        return None
    try:
        import psutil
    except ImportError:
        return None
    with contextlib.suppress(psutil.Error):
        proc = psutil.Process(pid)
        total = 0.0
        for p in [proc, *proc.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system + t.children_user + t.children_system
        return total
    return None


def _postmaster(admin_url: str) -> Any:
    """The postmaster (psutil.Process) of the server at ``admin_url``, or None."""
    try:
        import psutil
        import psycopg
    except ImportError:
        return None
    try:
        with psycopg.connect(admin_url, connect_timeout=5) as conn:
            row = conn.execute("SELECT pg_backend_pid()").fetchone()
            assert row is not None
            return psutil.Process(int(row[0])).parent()  # while that backend lives
    except (psycopg.Error, psutil.Error):
        return None  # a server on another machine, or in a container


class PostgresCpu:
    """The CPU of one database's backends (sampled) and of the server's background
    processes (delta), while one measured run goes: ``start()``, ``sample()`` as often
    as the caller can, ``stop()``."""

    def __init__(self, admin_url: str, database_url: str) -> None:
        self.postmaster = _postmaster(admin_url)
        self.database = str(conninfo_to_dict(database_url).get("dbname", ""))
        self.ours: dict[int, float] = {}  # backend pid -> CPU seconds at its last sample
        self.background_start: dict[int, float] = {}
        self.background_end: dict[int, float] = {}
        self.kinds: dict[int, str] = {}  # pid -> "ours", "background" or "other"

    def _kind(self, proc: Any) -> str:
        kind = self.kinds.get(proc.pid)
        if kind is None:
            title = " ".join(proc.cmdline())
            if f" {self.database} " in title:
                kind = "ours"
            elif any(word in title for word in BACKGROUND):
                kind = "background"
            else:
                kind = "other"
            self.kinds[proc.pid] = kind
        return kind

    def _scan(self) -> dict[int, tuple[str, float]]:
        import psutil

        out: dict[int, tuple[str, float]] = {}
        if self.postmaster is None:
            return out
        try:
            children = self.postmaster.children()
        except psutil.Error:
            return out
        for proc in children:
            with contextlib.suppress(psutil.Error):
                kind = self._kind(proc)
                if kind != "other":
                    t = proc.cpu_times()
                    out[proc.pid] = (kind, t.user + t.system)
        return out

    def start(self) -> None:
        for pid, (kind, seconds) in self._scan().items():
            if kind == "background":  # the database is fresh: none of its backends yet
                self.background_start[pid] = seconds

    def sample(self, _pid: int | None = None) -> None:
        for pid, (kind, seconds) in self._scan().items():
            if kind == "ours":
                self.ours[pid] = seconds

    def stop(self) -> dict[str, float | None]:
        self.sample()
        for pid, (kind, seconds) in self._scan().items():
            if kind == "background":
                self.background_end[pid] = seconds
        if self.postmaster is None:
            return {"backends": None, "background": None}
        background = sum(
            t - self.background_start.get(pid, 0.0) for pid, t in self.background_end.items()
        )
        return {"backends": sum(self.ours.values()), "background": background}
