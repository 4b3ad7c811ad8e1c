"""``fusillade list``: browse batches, served or local.

Each works against a running server (``--server``) or the database exactly as ``status``
does (``fusillade.cli.remote``: the same flags, the same backends).

- ``list``: the owner's batches, newest first, one line each (id, status, done/total,
  failed, created, endpoint); ``--limit`` and ``--after`` page as the API's ``after``
  cursor does, and the next page's command is printed on stderr when there is one.
  ``--json`` prints the API's list object instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from fusillade.cli.remote import (
    Batch,
    add_target_arguments,
    backend,
    batch_arg,
)
from fusillade.engine import MAX_PAGE

# --------------------------------------------------------------------- arguments


def _page_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_PAGE:
        raise argparse.ArgumentTypeError(f"expected a number from 1 to {MAX_PAGE}, got {text!r}")
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
