"""fusillade: durable batches of HTTP requests from PostgreSQL, on trio.

Embed it::

    async with fusillade.open(database_url, fusillade.DaemonConfig(...)) as engine:
        file = await engine.create_file("requests.jsonl")
        batch = await engine.create_batch(file.id)
        done = await engine.wait(batch.record.id)
        async for line in engine.iter_results(batch.record.id):
            ...

Everything public is re-exported here, and every type that a public signature names
(``tests/unit/test_public_api.py`` checks it). Submodules are private, except
``fusillade.testing`` (what to test code that uses fusillade with) and
``fusillade.metrics`` (the Prometheus metrics).

A ``Repository`` is where files, batches and requests are kept: ``open`` builds one on
PostgreSQL from a URL, or takes one (``fusillade.testing.MemoryRepository``). Its methods
are the interface between the engine, the daemon and a store, not part of this API.
"""

from __future__ import annotations

from fusillade._version import __version__
from fusillade.core.idempotency import IdempotencyKey
from fusillade.core.jsonl import JsonlLimits, LineProblem, ProblemCode
from fusillade.core.live import LiveLine, LivePage, ResultCursor
from fusillade.core.models import (
    BatchRecord,
    BatchStatus,
    BatchView,
    FailureReason,
    FilePurpose,
    FileRecord,
    RequestCounts,
    RequestState,
    RequestTemplate,
    Usage,
)
from fusillade.core.results import ResultLine
from fusillade.core.retry import RetryPolicy
from fusillade.core.scheduling.budget import BudgetLimits, BudgetState
from fusillade.core.trouble import BatchTrouble, ErrorKind, ErrorKinds, ErrorSample
from fusillade.core.webhooks import WebhookPolicy
from fusillade.engine import Content, Engine, Follow, Rules, open
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
from fusillade.runtime.budgets import ScopeState
from fusillade.runtime.config import DaemonConfig, Upstream, Webhook
from fusillade.runtime.daemon import Daemon, DaemonStats
from fusillade.runtime.limits import ModelStats
from fusillade.store.interface import (
    ModelActivity,
    Page,
    RecentFailure,
    Repository,
    RequestSummary,
    StatusSnapshot,
)

__all__ = [
    "BatchRecord",
    "BatchStatus",
    "BatchTrouble",
    "BatchView",
    "BudgetLimits",
    "BudgetState",
    "ConfigError",
    "Conflict",
    "Content",
    "Daemon",
    "DaemonConfig",
    "DaemonStats",
    "Engine",
    "ErrorKind",
    "ErrorKinds",
    "ErrorSample",
    "FailureReason",
    "FilePurpose",
    "FileRecord",
    "Follow",
    "FusilladeError",
    "IdempotencyKey",
    "IllegalTransition",
    "InvalidJSONL",
    "JsonlLimits",
    "LineProblem",
    "LiveLine",
    "LivePage",
    "MigrationError",
    "ModelActivity",
    "ModelStats",
    "NotFound",
    "Page",
    "ProblemCode",
    "RecentFailure",
    "Repository",
    "RequestCounts",
    "RequestState",
    "RequestSummary",
    "RequestTemplate",
    "ResultCursor",
    "ResultLine",
    "RetryPolicy",
    "Rules",
    "ScopeState",
    "StatusSnapshot",
    "StoreError",
    "StoreUnavailable",
    "Upstream",
    "Usage",
    "ValidationError",
    "Webhook",
    "WebhookPolicy",
    "__version__",
    "open",
]
