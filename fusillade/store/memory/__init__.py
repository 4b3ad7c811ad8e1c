"""The in-memory repository: the ``Repository`` contract in plain dicts, for tests and
for running without a database.

Theory of operation
-------------------
Every table of ``sql/migrations`` is a dict here (files, templates, batches, requests,
daemons, budget leases, idempotency keys), guarded by one re-entrant lock: each public
method holds it for its whole body, so a call is as atomic as the PostgreSQL transaction
it mirrors. Iterators take the lock once per page, like the PostgreSQL repository takes
a connection per page.

Request state changes go through ``fusillade.core.transitions.step`` (claim is CLAIM
then START, results are SUCCEED/RETRY/FAIL/CANCEL, sweeps are CANCEL/EXPIRE, a batch
retry is MANUAL_RETRY, a reclaim is RECLAIM or FAIL with reason ``lost``), which refuses
any pair the state table does not allow. Where a statement in ``sql/queries`` writes
columns differently from ``step`` (a result stores the attempt's typed reason without
its HTTP details, a retry's ``not_before`` as given and the failure of any kind), the
row is adjusted after the step so that both stores hold the same values: a stateful
test (``tests/integration/test_store_equivalence.py``) holds the two equal, and
``tests/integration/test_sql_transitions.py`` holds every SQL write to the table.

The fences are the SQL's: a daemon write lands only while the row is ``processing``
under that daemon and attempt (or, for a success, ``canceled`` after that attempt was
sent); anything else is a lost race, reported in ``RecordStats.lost``. The table's
CHECK constraints are checked before a write, and a violation raises ``StoreError``
with nothing written, as the database would.

Nothing here imports psycopg: ``fusillade.store.memory`` works in an installation
without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fusillade.store.memory._batches import BatchParts
from fusillade.store.memory._daemon import DaemonParts
from fusillade.store.memory._files import FileParts
from fusillade.store.memory._results import ResultParts
from fusillade.store.memory._retention import RetentionParts
from fusillade.store.memory._status import StatusParts
from fusillade.store.memory._trouble import TroubleParts
from fusillade.store.memory._webhooks import WebhookParts

if TYPE_CHECKING:
    from fusillade.store.interface import Repository

__all__ = ["MemoryRepository"]


class MemoryRepository(
    FileParts,
    BatchParts,
    StatusParts,
    ResultParts,
    TroubleParts,
    DaemonParts,
    RetentionParts,
    WebhookParts,
):
    """A ``Repository`` in process memory. Thread-safe; nothing survives the process.

    Calls never block on I/O (``blocking = False``): the runtime calls them on the event
    loop, which lets tests run the daemon on it under a virtual clock.
    """

    blocking = False


if TYPE_CHECKING:

    def _implements(repo: MemoryRepository) -> Repository:
        return repo  # mypy checks that MemoryRepository satisfies the protocol
