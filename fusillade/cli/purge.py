"""``fusillade purge --older-than DURATION [--dry-run]``: the maintenance's retention
purge, by hand (docs/semantics.md, "Retention").

Removes, in the same bounded chunks as the daemons' maintenance: files past their
``expires_at`` (marked deleted), the content of deleted input files no unfinished batch
reads, the requests of batches that finished longer than DURATION ago (or whose output
expired), and the rows of daemons stopped longer than DURATION ago. ``--dry-run`` counts
what would go and changes nothing. Times are the database's clock. Exit status: 0 done
(also when nothing was due), 1 the database failed or refused (one line on stderr), 2 a
usage mistake.
"""

from __future__ import annotations

import argparse
from datetime import timedelta

from fusillade.store.interface import PurgeStats


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from fusillade.cli._main import _add_config, _duration

    parser.add_argument(
        "--older-than",
        type=_duration,
        required=True,
        metavar="DURATION",
        help="remove the requests of batches finished, and daemons stopped, longer ago "
        "than this ('30d', '12h', '90m' or seconds)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print what would be removed; remove nothing"
    )
    _add_config(parser)


def describe(stats: PurgeStats) -> str:
    """What ``stats`` counts, as one line per kind."""
    return "\n".join(
        [
            f"expired files: {stats.expired_files}",
            f"deleted files emptied: {stats.purged_files} ({stats.templates} templates)",
            f"finished batches purged: {stats.batches} ({stats.requests} requests)",
            f"stopped daemons removed: {stats.daemons}",
        ]
    )


def run(args: argparse.Namespace) -> int:
    from fusillade.cli._main import database
    from fusillade.config import settings_from_args
    from fusillade.store.postgres import PostgresRepository

    older_than: timedelta = args.older_than
    with database(settings_from_args(args)) as url, PostgresRepository(url, max_size=1) as repo:
        now = repo.database_time()
        assert now is not None  # PostgreSQL has its own clock
        cutoff = now - older_than
        if args.dry_run:
            stats = repo.purge_preview(now=now, finished_before=cutoff, stopped_before=cutoff)
            print("would remove (dry run):")
        else:
            stats = PurgeStats()
            while True:
                step = repo.purge(now=now, finished_before=cutoff, stopped_before=cutoff)
                stats += step
                if not step.more:
                    break
            print("removed:")
        print(describe(stats))
    return 0
