"""The no-database build: the core and the in-memory store work without psycopg.

A subprocess installs a meta-path finder that refuses ``psycopg`` and ``psycopg_pool``
(as if they were not installed), then runs a small batch end to end on
``MemoryRepository``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import fusillade

_IMPORT_ROOT = str(Path(fusillade.__file__).resolve().parent.parent)

_SCRIPT = textwrap.dedent(
    """
    import importlib
    import pkgutil
    import sys
    from datetime import UTC, datetime, timedelta
    from uuid import uuid4

    class NoPsycopg:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("psycopg", "psycopg_pool", "psycopg_binary"):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
            return None

    sys.meta_path.insert(0, NoPsycopg())
    for name in [m for m in sys.modules if m.split(".")[0].startswith("psycopg")]:
        del sys.modules[name]
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("the blocker does not work")

    import fusillade.core
    for info in pkgutil.iter_modules(fusillade.core.__path__):
        importlib.import_module(f"fusillade.core.{info.name}")
    import fusillade.serde
    import fusillade.store
    import fusillade.store.interface
    from fusillade.core.models import BatchStatus, RequestTemplate
    from fusillade.store.interface import BatchSpec, DaemonInfo
    from fusillade.core.attempts import AttemptResult, ResultKind
    from fusillade.store.memory import MemoryRepository

    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    repo = MemoryRepository()
    f = repo.create_file(
        "alice",
        "in.jsonl",
        [RequestTemplate(f"r{i}", "m1", '{"i": %d}' % i) for i in range(3)],
        now=t0,
    )
    spec = BatchSpec(f.id, "/v1/chat/completions", "24h", timedelta(hours=24))
    batch = repo.create_batch("alice", spec, now=t0).record.id
    daemon = uuid4()
    repo.register_daemon(DaemonInfo(daemon, "host", 1, "test"), now=t0)
    claimed = repo.claim(daemon, [(batch, "m1", 10)], now=t0)
    assert len(claimed) == 3, claimed
    stats = repo.record_results(
        daemon,
        [c.result(ResultKind.SUCCEEDED, t0, 200, "{}") for c in claimed],
    )
    assert stats.written == 3, stats
    view = repo.get_batch("alice", batch, now=t0)
    assert view.status is BatchStatus.COMPLETED, view.status
    assert view.counts.completed == 3
    assert len(list(repo.iter_results("alice", batch, errors=False))) == 3
    leaked = sorted(m for m in sys.modules if m.split(".")[0].startswith("psycopg"))
    assert not leaked, leaked
    print("ok")
    """
)


def test_core_and_memory_store_work_without_psycopg(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": _IMPORT_ROOT, "PYTHONDONTWRITEBYTECODE": "1"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
