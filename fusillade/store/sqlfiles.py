"""Where the shipped SQL lives, and the named queries loaded from it.

In a checkout the SQL is the top-level ``sql/`` directory; in an installed wheel it is
``fusillade/_sql`` (``pyproject.toml`` force-includes it there). Both are found the same
way: the package copy first, then the checkout.
"""

from __future__ import annotations

from pathlib import Path

import attrs

_PACKAGE_DIR = Path(__file__).resolve().parent.parent


def sql_root() -> Path:
    """The directory holding ``migrations/`` and ``queries/``."""
    for candidate in (_PACKAGE_DIR / "_sql", _PACKAGE_DIR.parent / "sql"):
        if (candidate / "migrations").is_dir():
            return candidate
    raise FileNotFoundError(f"fusillade's SQL files are missing (looked beside {_PACKAGE_DIR})")


@attrs.frozen
class Queries:
    """One attribute per file in ``sql/queries``; the name is the file's stem.

    Each statement is named after the repository method that runs it. ``load_queries``
    fails when a file is missing or when a file has no attribute here, so a query cannot
    be added, renamed or dropped without this list (and its reviewers) noticing.
    """

    batch_trouble: str
    batches_to_abort: str
    begin: str
    budget_holders: str
    cancel_batch: str
    claim: str
    claim_idempotency_key: str
    claim_webhook_events: str
    claimable_batches: str
    count_batch_requests: str
    count_webhook_outbox: str
    create_batch_requests: str
    daemon_heartbeat: str
    daemon_register: str
    daemon_stop: str
    database_time: str
    drop_budget_leases: str
    error_kinds: str
    expire_batches: str
    expire_requests: str
    first_path_mismatch: str
    fold_batch_state_counts: str
    forget_idempotency_keys: str
    freeze_batch: str
    get_batch: str
    get_file: str
    get_idempotency_key: str
    get_request: str
    get_result_file_sizes: str
    give_up_webhook_events: str
    insert_batch: str
    insert_file: str
    insert_webhook_event: str
    lease_budgets: str
    lift_statement_timeout: str
    list_batches: str
    list_files: str
    list_files_asc: str
    list_requests: str
    listen: str
    live_daemons: str
    live_in_progress: str
    live_output: str
    lock_batch: str
    lock_batch_for_freeze: str
    notify: str
    pick_unfinished_creation: str
    purge_batch_done: str
    purge_batch_requests: str
    purge_blank_templates: str
    purge_daemons: str
    purge_delete_templates: str
    purge_expire_files: str
    purge_file_progress: str
    purge_freeze_candidates: str
    purge_pick_batch: str
    purge_pick_file: str
    purge_preview: str
    read_one_snapshot: str
    reclaim_dead_daemons: str
    reclaim_timed_out: str
    record_results: str
    release: str
    retry_batch: str
    set_escalation: str
    set_file_stats: str
    set_result_file_sizes: str
    settled_batches: str
    settle_webhook_event: str
    soft_delete_file: str
    stream_by_line: str
    status_batches: str
    status_failures: str
    status_models: str
    stream_errors: str
    stream_input: str
    stream_output: str
    sweep_cancelled: str


def load_queries(directory: Path | None = None) -> Queries:
    """Read every ``*.sql`` file of ``directory`` (default: the shipped queries).

    Raises:
        RuntimeError: a query named by ``Queries`` has no file, or a file has no field.
    """
    directory = directory or sql_root() / "queries"
    files = {p.stem: p for p in sorted(directory.glob("*.sql"))}
    fields = {f.name for f in attrs.fields(Queries)}
    missing, extra = sorted(fields - files.keys()), sorted(files.keys() - fields)
    if missing or extra:
        raise RuntimeError(
            f"sql/queries out of step with Queries: missing {missing}, extra {extra}"
        )
    return Queries(**{name: files[name].read_text(encoding="utf-8") for name in sorted(fields)})
