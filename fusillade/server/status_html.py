"""The status page's content: the snapshot as JSON, and as server-rendered HTML.

Pure functions over ``StatusSnapshot``: ``status_data`` shapes the JSON that
``GET /status.json`` answers and ``static/status.js`` renders; ``render_page`` renders
the same data (or a key prompt) as the page ``GET /`` answers, in the same markup the
script produces, so a page works before its first poll and without script. Every value
from the database passes through ``html.escape`` (batch metadata is user input).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from html import escape
from typing import Any, Final

from fusillade.core.ids import format_id
from fusillade.core.models import BatchView
from fusillade.engine import STATUS_WINDOW, ModelActivity, StatusSnapshot

POLL_SECONDS: Final = 2
"""How often the page's script asks ``/status.json`` again."""

Data = Mapping[str, Any]


def _utc(time: datetime) -> str:
    """A time in the JSON: ``2026-01-01T12:00:00Z``. The page shows it without the ``T``
    and the ``Z`` (``_short``; ``shortTime`` in ``status.js``)."""
    return time.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _short(time: str) -> str:
    return time.replace("T", " ").removesuffix("Z")


def _batch(view: BatchView) -> dict[str, Any]:
    r, c = view.record, view.counts
    return {
        "id": format_id("batch", r.id),
        "owner": r.owner,
        "status": view.status.value,
        "endpoint": r.endpoint,
        "created_at": _utc(r.created_at),
        "models": list(r.models),
        "metadata": dict(r.metadata or {}),
        "counts": {
            "total": c.total,
            "completed": c.completed,
            "failed": c.failed,
            "canceled": c.canceled,
            "in_progress": c.in_progress,
            "pending": c.pending,
        },
    }


def _models(snapshot: StatusSnapshot) -> list[ModelActivity]:
    """The activity of every model, with a zero row for each model of an unfinished
    batch that has none (waiting, or between requests)."""
    found = {m.model: m for m in snapshot.models}
    for view in snapshot.batches:
        if not view.status.is_terminal:
            for model in view.record.models:
                found.setdefault(model, ModelActivity(model, 0, 0, 0))
    return [found[name] for name in sorted(found)]


def status_data(snapshot: StatusSnapshot, *, owner: str | None) -> dict[str, Any]:
    """The JSON of ``GET /status.json``; ``owner`` ``None``: every owner's work."""
    window = int(STATUS_WINDOW.total_seconds())
    return {
        "owner": owner,
        "now": _utc(snapshot.now),
        "window_seconds": window,
        "poll_seconds": POLL_SECONDS,
        "batches": [_batch(v) for v in snapshot.batches],
        "models": [
            {
                "model": m.model,
                "in_flight": m.in_flight,
                "completed": m.completed,
                "failed": m.failed,
                "per_second": round(m.completed / window, 2),
            }
            for m in _models(snapshot)
        ],
        "errors": [
            {
                "time": _utc(f.finished_at),
                "model": f.model,
                "batch_id": format_id("batch", f.batch_id),
                "status": f.response_status,
                "reason": f.reason.value,
                "message": f.message or "",
            }
            for f in snapshot.failures
        ],
    }


def _cells(*values: object) -> str:
    return "".join(f"<td>{escape(str(v))}</td>" for v in values)


def _metadata(metadata: Mapping[str, str]) -> str:
    return "; ".join(f"{k}={v}" for k, v in sorted(metadata.items()))


def _done(counts: Mapping[str, int]) -> int:
    return counts["completed"] + counts["failed"] + counts["canceled"]


def _progress(counts: Mapping[str, int]) -> str:
    """The progress cell: a bar of the settled requests, then the numbers in words
    (``status.js`` ``progressCell`` builds the same)."""
    done, total = _done(counts), counts["total"]
    label = (
        f"{done}/{total} done: {counts['completed']} completed, {counts['failed']} failed, "
        f"{counts['canceled']} canceled, {counts['in_progress']} in flight"
    )
    return (
        f'<td><progress value="{done}" max="{max(total, 1)}"></progress>'
        f' <span class="counts">{escape(label)}</span></td>'
    )


def _batch_rows(batches: Sequence[Data]) -> str:
    if not batches:
        return '<tr><td colspan="7" class="empty">no batches</td></tr>'
    return "".join(
        f'<tr data-id="{escape(b["id"])}">'
        + _cells(b["id"], b["status"], b["owner"], ", ".join(b["models"]))
        + f'<td class="metadata">{escape(_metadata(b["metadata"]))}</td>'
        + _progress(b["counts"])
        + _cells(_short(b["created_at"]))
        + "</tr>"
        for b in batches
    )


def _model_rows(models: Sequence[Data]) -> str:
    if not models:
        return '<tr><td colspan="5" class="empty">no requests in flight</td></tr>'
    return "".join(
        f'<tr data-model="{escape(m["model"])}">'
        + _cells(m["model"], m["in_flight"], m["completed"], m["failed"], m["per_second"])
        + "</tr>"
        for m in models
    )


def _error_rows(errors: Sequence[Data]) -> str:
    if not errors:
        return '<tr><td colspan="5" class="empty">no failures</td></tr>'
    return "".join(
        "<tr>"
        + _cells(
            _short(e["time"]),
            e["model"],
            e["batch_id"],
            e["status"] if e["status"] is not None else e["reason"],
            e["message"],
        )
        + "</tr>"
        for e in errors
    )


def _scope(data: Data | None) -> str:
    if data is None:
        return "enter an API key to see its batches"
    if data["owner"] is None:
        return "every owner"
    return f"owner {data['owner']}"


def render_page(data: Data | None) -> str:
    """The whole page; ``data`` ``None``: the caller must give a key first (the page
    shows a prompt and no data until the script has one)."""
    window = int(STATUS_WINDOW.total_seconds())
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>fusillade status</title>
<link rel="stylesheet" href="/status.css">
<script src="/status.js" defer></script>
</head>
<body data-poll-seconds="{POLL_SECONDS}">
<header>
<h1>fusillade</h1>
<span id="scope">{escape(_scope(data))}</span>
<form id="key-form" autocomplete="off">
<input id="key" type="password" placeholder="API key" aria-label="API key">
<button type="submit">Show</button>
<button type="button" id="forget">Forget key</button>
</form>
</header>
<p id="message" role="status">{"" if data is not None else "This page needs an API key."}</p>
<main id="content"{"" if data is not None else " hidden"}>
<section>
<h2>Batches</h2>
<table id="batches">
<thead><tr><th>batch</th><th>status</th><th>owner</th><th>models</th><th>metadata</th>
<th>progress</th><th>created (UTC)</th></tr></thead>
<tbody>{_batch_rows(data["batches"] if data else [])}</tbody>
</table>
</section>
<section>
<h2>Models</h2>
<table id="models">
<thead><tr><th>model</th><th>in flight</th><th>completed ({window} s)</th>
<th>failed ({window} s)</th><th>completed/s</th></tr></thead>
<tbody>{_model_rows(data["models"] if data else [])}</tbody>
</table>
</section>
<section>
<h2>Recent errors</h2>
<table id="errors">
<thead><tr><th>time (UTC)</th><th>model</th><th>batch</th><th>status</th><th>error</th></tr></thead>
<tbody>{_error_rows(data["errors"] if data else [])}</tbody>
</table>
</section>
</main>
<footer>updated <span id="updated">{escape(_short(data["now"])) if data else "never"}</span> UTC
</footer>
</body>
</html>
"""
