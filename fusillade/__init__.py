"""fusillade: durable batches of HTTP requests from PostgreSQL, on trio.

Embed it::

    async with fusillade.open(database_url, fusillade.DaemonConfig(...)) as engine:
        file = await engine.create_file("requests.jsonl")
        batch = await engine.create_batch(file.id)
        done = await engine.wait(batch.record.id)
        async for line in engine.iter_results(batch.record.id):
            ...

Everything public is re-exported here; submodules are private unless documented.
"""

from __future__ import annotations

__version__ = "0.1.0"  # before the imports: submodules may read it

from fusillade.core.models import (
    BatchStatus,
    BatchView,
    FileRecord,
    RequestCounts,
    RequestState,
    RequestTemplate,
    Usage,
)
from fusillade.core.results import ResultLine
from fusillade.core.retry import RetryPolicy
from fusillade.engine import Engine, open
from fusillade.errors import (
    ConfigError,
    Conflict,
    FusilladeError,
    IllegalTransition,
    InvalidJSONL,
    MigrationError,
    NotFound,
    StoreError,
    StoreUnavailable,
    ValidationError,
)
from fusillade.runtime.config import DaemonConfig, Upstream
from fusillade.runtime.daemon import Daemon, DaemonStats
from fusillade.store.interface import Page

__all__ = [
    "BatchStatus",
    "BatchView",
    "ConfigError",
    "Conflict",
    "Daemon",
    "DaemonConfig",
    "DaemonStats",
    "Engine",
    "FileRecord",
    "FusilladeError",
    "IllegalTransition",
    "InvalidJSONL",
    "MigrationError",
    "NotFound",
    "Page",
    "RequestCounts",
    "RequestState",
    "RequestTemplate",
    "ResultLine",
    "RetryPolicy",
    "StoreError",
    "StoreUnavailable",
    "Upstream",
    "Usage",
    "ValidationError",
    "__version__",
    "open",
]
