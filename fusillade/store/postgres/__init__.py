"""The PostgreSQL repository: psycopg 3's sync API over a ``psycopg_pool.ConnectionPool``.

Theory of operation
-------------------
Every statement comes from ``sql/queries`` (loaded once into ``Queries``). Each method
does one short transaction on a pooled connection and returns plain records; nothing
holds a connection while a caller consumes results (``iter_results`` fetches one page
per connection use). Daemon writes are fenced in SQL by (state, owner, attempt); a
fence that fails is a lost race, counted in the returned stats, never raised.

psycopg errors are translated by ``fusillade.store.errors.translate_errors``, the one
boundary for them. Server-side prepared statements are off (``prepare_threshold=None``):
every execution is planned with its real parameters, so a generic plan can never make
a list or claim query slow on a large table; it also keeps PgBouncer's
transaction pooling safe. Every transaction carries a statement timeout (``SET LOCAL``,
sent with its ``BEGIN``: ``begin.sql``) and connections have TCP keepalives, so a
silently dropped connection cannot freeze a periodic query for hours.
"""

from __future__ import annotations

from fusillade.store.postgres._base import (
    CANCEL_CHANNEL,
    WORK_CHANNEL,
    PostgresListener,
    connection_kwargs,
)
from fusillade.store.postgres._daemon import DaemonQueries
from fusillade.store.postgres._files import FileQueries
from fusillade.store.postgres._results import ResultQueries
from fusillade.store.postgres._retention import RetentionQueries
from fusillade.store.postgres._status import StatusQueries
from fusillade.store.postgres._trouble import TroubleQueries
from fusillade.store.postgres._webhooks import WebhookQueries

__all__ = [
    "CANCEL_CHANNEL",
    "WORK_CHANNEL",
    "PostgresListener",
    "PostgresRepository",
    "connection_kwargs",
]


class PostgresRepository(
    FileQueries,
    StatusQueries,
    ResultQueries,
    TroubleQueries,
    DaemonQueries,
    RetentionQueries,
    WebhookQueries,
):
    """A ``Repository`` on PostgreSQL. Thread-safe; call it from worker threads.

    Each part lives in its own module (files, batches and the status page's reads of
    them, results, the progress line's reads, daemon side, retention) on top of ``PostgresBase``
    (the pool, transactions, LISTEN).
    """
