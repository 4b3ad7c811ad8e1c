"""``fusillade list|retry|watch``: browse, re-run and follow batches, served or local.

Each works against a running server (``--server``) or the database exactly as ``status``
does (``fusillade.cli.remote``: the same flags, the same backends).

- ``list``: the owner's batches, newest first, one line each (id, status, done/total,
  failed, created, endpoint); ``--limit`` and ``--after`` page as the API's ``after``
  cursor does, and the next page's command is printed on stderr when there is one.
  ``--json`` prints the API's list object instead.
- ``retry``: ``POST /v1/batches/{id}/retry``: the failed requests (with
  ``--include-cancelled`` also the canceled and expired ones) run again; prints the Batch.
- ``watch``: the progress line of ``run`` until the batch ends (with the retries waiting
  and the latest error: the database's, or the server's errors extension), then the most
  frequent kinds of error. On the database it says once when no daemon is running there
  (and keeps waiting: one may be started). Exit status 0 when it completed
  with every request succeeded, 1 otherwise (some failed or were canceled, or the batch
  failed, expired or was cancelled).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from fusillade.cli.remote import (
    Batch,
    DaemonCheck,
    add_id_arguments,
    add_target_arguments,
    backend,
    batch_arg,
)
from fusillade.engine import MAX_PAGE
from fusillade.progress import Progress, error_summary

# --------------------------------------------------------------------- arguments


def _page_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_PAGE:
        raise argparse.ArgumentTypeError(f"expected a number from 1 to {MAX_PAGE}, got {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def add_list_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--limit", type=_page_size, default=20, metavar="N", help="batches per page (1-100)"
    )
    parser.add_argument(
        "--after",
        type=batch_arg,
        metavar="ID",
        help="the page after this batch (the last id of the previous page)",
    )
    parser.add_argument("--json", action="store_true", help="print the API's list object")
    add_target_arguments(parser)


def add_retry_arguments(parser: argparse.ArgumentParser) -> None:
    add_id_arguments(parser)
    parser.add_argument(
        "--include-cancelled",
        action="store_true",
        help="also run the canceled and expired requests again",
    )


def add_watch_arguments(parser: argparse.ArgumentParser) -> None:
    add_id_arguments(parser)
    parser.add_argument(
        "--interval",
        type=_seconds,
        default=1.0,
        metavar="SECONDS",
        help="time between reads of the batch (default 1)",
    )
    parser.add_argument(
        "--progress-interval",
        type=_seconds,
        default=5.0,
        metavar="SECONDS",
        help="time between progress lines when not on a terminal (default 5)",
    )


# ---------------------------------------------------------------------- commands


def _created(unix_s: int) -> str:
    return datetime.fromtimestamp(unix_s, UTC).strftime("%Y-%m-%d %H:%M:%S")


def batch_table(batches: Sequence[Batch]) -> list[str]:
    """The lines of ``list``: a header, then one line per batch in the given order.

    ``done`` counts the settled requests (``completed + failed``: the API's ``failed``
    includes the canceled ones).
    """
    rows = [("ID", "STATUS", "DONE/TOTAL", "FAILED", "CREATED (UTC)", "ENDPOINT")]
    for b in batches:
        c = b["request_counts"]
        done = f"{c['completed'] + c['failed']}/{c['total']}"
        rows.append(
            (b["id"], b["status"], done, str(c["failed"]), _created(b["created_at"]), b["endpoint"])
        )
    # every column but the last padded to its widest cell
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return [
        "  ".join([*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[-1]])
        for row in rows
    ]


def list_batches(args: argparse.Namespace) -> int:
    with backend(args) as where:
        page = where.list_batches(args.after, args.limit)
    if args.json:
        print(json.dumps(page, indent=2, ensure_ascii=False))
        return 0
    batches: list[Any] = page["data"]
    if not batches:
        print("no batches" if args.after is None else "no more batches", file=sys.stderr)
        return 0
    for line in batch_table(batches):
        print(line)
    if page["has_more"]:
        print(f"more: fusillade list --after {page['last_id']}", file=sys.stderr)
    return 0


def retry(args: argparse.Namespace) -> int:
    with backend(args) as where:
        batch = where.retry(args.batch_id, args.include_cancelled)
    print(json.dumps(batch, indent=2, ensure_ascii=False))
    print(f"follow it with: fusillade watch {batch['id']}", file=sys.stderr)
    return 0


def watch(args: argparse.Namespace) -> int:
    progress = Progress(sys.stderr, interval=args.progress_interval)
    trouble = None
    with backend(args) as where:
        daemons = DaemonCheck(where, sys.stderr)
        while True:
            snapshot = where.snapshot(args.batch_id)
            done = snapshot.status.is_terminal
            if progress.details_due(final=done):
                trouble = where.trouble(args.batch_id)
            progress.update(snapshot, final=done, trouble=trouble)
            if done:
                break
            daemons.check()
            time.sleep(args.interval)  # the polling period of a client, as submit --wait
        c = snapshot.counts
        unsuccessful = c.failed + c.canceled
        kinds = where.error_kinds(args.batch_id) if unsuccessful else None
    print(
        f"{snapshot.status.value}: {c.completed} succeeded, {unsuccessful} did not, of {c.total}",
        file=sys.stderr,
    )
    for line in error_summary(kinds) if kinds is not None else ():
        print(line, file=sys.stderr)
    ok = snapshot.status.value == "completed" and c.completed == c.total
    return 0 if ok else 1
