"""The application service: ``async with fusillade.open(url, config) as engine: ...``.

``Engine`` is the one place that knows the rules of files and batches (``Rules``, the
metadata limits, public ids and list cursors), renders a file's content (``Content``)
and pages listings. The HTTP routes, the commands of ``fusillade/cli`` and ``run`` are
adapters over it. ``open`` runs the daemon inside the caller's task tree (trio by
default, asyncio through anyio).

Modules: ``_service.py`` (``Engine``), ``_rules.py`` (what it accepts), ``_content.py``
(a file's bytes), ``_follow.py`` (a batch's output as it is recorded), ``_open.py``
(``open``, a composition root).
"""

from __future__ import annotations

# The records crossing the engine's methods, for its adapters (the server does not
# import the store).
from fusillade.core.live import LiveLine, LivePage, ResultCursor
from fusillade.core.results import ResultLine
from fusillade.engine._content import LINES_PER_CHUNK, Content
from fusillade.engine._follow import Follow
from fusillade.engine._open import open
from fusillade.engine._rules import (
    MAX_FILE_PAGE,
    MAX_METADATA_KEY,
    MAX_METADATA_PAIRS,
    MAX_METADATA_VALUE,
    MAX_PAGE,
    Rules,
    check_metadata,
    expires_after,
)
from fusillade.engine._service import DEFAULT_OWNER, LIVE_PAGE, STATUS_WINDOW, Engine
from fusillade.store.interface import (
    ModelActivity,
    Page,
    RecentFailure,
    RequestSummary,
    StatusSnapshot,
)

__all__ = [
    "DEFAULT_OWNER",
    "LINES_PER_CHUNK",
    "LIVE_PAGE",
    "MAX_FILE_PAGE",
    "MAX_METADATA_KEY",
    "MAX_METADATA_PAIRS",
    "MAX_METADATA_VALUE",
    "MAX_PAGE",
    "STATUS_WINDOW",
    "Content",
    "Engine",
    "Follow",
    "LiveLine",
    "LivePage",
    "ModelActivity",
    "Page",
    "RecentFailure",
    "RequestSummary",
    "ResultCursor",
    "ResultLine",
    "Rules",
    "StatusSnapshot",
    "check_metadata",
    "expires_after",
    "open",
]
