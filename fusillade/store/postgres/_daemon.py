"""The daemon side: claim, fenced result writes, release, reclaim, sweeps, heartbeats."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from psycopg.types.json import Jsonb

from fusillade import lifecycle
from fusillade.core.attempts import AbortReason, AttemptResult, ClaimedRequest
from fusillade.core.batches import ClaimableBatch, window_of
from fusillade.core.idempotency import expired_before
from fusillade.core.models import RequestState
from fusillade.store.interface import (
    Allotment,
    BudgetHolders,
    DaemonInfo,
    ReclaimStats,
    RecordStats,
    merge_allotments,
)
from fusillade.store.postgres._base import WORK_CHANNEL, PostgresBase


class DaemonQueries(PostgresBase):
    def claimable_batches(self, *, now: datetime) -> list[ClaimableBatch]:
        with self._tx() as cur:
            rows = cur.execute(self.q.claimable_batches, {"now": now}).fetchall()
        return [
            ClaimableBatch(
                id=r["id"],
                owner=r["owner"],
                models=tuple(r["models"]),
                expires_at=r["expires_at"],
                window=window_of(r["completion_window"], r["created_at"], r["expires_at"]),
                escalated=r["escalated"],
                pending=r["pending"],
                finished=r["finished"],
                total=r["total"],
            )
            for r in rows
        ]

    def claim(
        self, daemon_id: UUID, allotments: Sequence[Allotment], *, now: datetime
    ) -> list[ClaimedRequest]:
        """Claim and start at most ``n`` due requests per ``(batch, model, n)``, in one
        statement."""
        wanted = merge_allotments(allotments)
        if not wanted:
            return []
        with self._tx() as cur:
            rows = cur.execute(
                self.q.claim,
                {
                    "daemon_id": daemon_id,
                    "now": now,
                    "batch_ids": [b for b, _ in wanted],
                    "models": [m for _, m in wanted],
                    "counts": list(wanted.values()),
                },
            ).fetchall()
        return [
            ClaimedRequest(
                id=r["id"],
                batch_id=r["batch_id"],
                attempt=r["attempts"],
                budget_used=r["attempts"] - r["budget_base"],
                model=r["model"],
                batch_expires_at=r["batch_expires_at"],
                custom_id=r["custom_id"],
                endpoint=r["endpoint"],
                method=r["method"],
                path=r["path"],
                body=r["body"],
                daemon_id=daemon_id,
                # claim.sql sets both to now (parsing them back cost 1.5 ms per 256 rows)
                claimed_at=now,
                started_at=now,
                not_before=r["not_before"],
                api_key=r["api_key"],
            )
            for r in rows
        ]

    def set_escalation(
        self, *, escalate: Sequence[UUID], clear: Sequence[UUID], now: datetime
    ) -> None:
        if not escalate and not clear:
            return
        with self._tx() as cur:
            cur.execute(
                self.q.set_escalation,
                {"escalate": list(escalate), "clear": list(clear), "now": now},
            )

    def record_results(self, daemon_id: UUID, results: Sequence[AttemptResult]) -> RecordStats:
        """Write many attempt results in one statement; fenced rows count as lost."""
        if not results:
            return RecordStats(written=0)
        params = record_results_params(daemon_id, results)
        with self._tx() as cur:
            written = {row["id"] for row in cur.execute(self.q.record_results, params)}
        lost = tuple(r.request_id for r in results if r.request_id not in written)
        return RecordStats(written=len(written), lost=lost)

    def release(
        self, daemon_id: UUID, *, now: datetime, request_ids: Sequence[UUID] | None = None
    ) -> int:
        with self._tx() as cur:
            rows = cur.execute(
                self.q.release,
                {
                    "daemon_id": daemon_id,
                    "now": now,
                    "ids": list(request_ids) if request_ids is not None else None,
                },
            ).fetchall()
            if rows:
                cur.execute(self.q.notify, {"channel": WORK_CHANNEL, "payload": "released"})
        return len(rows)

    def reclaim_dead(
        self, *, now: datetime, stale_before: datetime, max_attempts: int, limit: int = 1000
    ) -> ReclaimStats:
        with self._tx() as cur:
            rows = cur.execute(
                self.q.reclaim_dead_daemons,
                {
                    "now": now,
                    "stale_before": stale_before,
                    "limit": limit,
                    "max_attempts": max_attempts,
                },
            ).fetchall()
        return _reclaim_stats(rows)

    def reclaim_timed_out(
        self, *, now: datetime, claimed_before: datetime, max_attempts: int, limit: int = 1000
    ) -> ReclaimStats:
        with self._tx() as cur:
            rows = cur.execute(
                self.q.reclaim_timed_out,
                {
                    "now": now,
                    "claimed_before": claimed_before,
                    "limit": limit,
                    "max_attempts": max_attempts,
                },
            ).fetchall()
        return _reclaim_stats(rows)

    def batches_to_abort(
        self, batch_ids: Sequence[UUID], *, now: datetime
    ) -> dict[UUID, AbortReason]:
        if not batch_ids:
            return {}
        with self._tx() as cur:
            rows = cur.execute(
                self.q.batches_to_abort, {"batch_ids": list(batch_ids), "now": now}
            ).fetchall()
        return {r["id"]: AbortReason(r["reason"]) for r in rows}

    def sweep(self, *, now: datetime, limit: int = 5000) -> int:
        """One round of maintenance: stamp expired batches, then turn a bounded chunk of
        pending rows of cancelled and expired batches canceled. Returns rows changed."""
        with self._tx() as cur:
            expired = cur.execute(self.q.expire_batches, {"now": now}).fetchall()
            swept = len(
                cur.execute(
                    self.q.sweep_cancelled, {"now": now, "limit": limit, "batch_id": None}
                ).fetchall()
            )
            swept += len(
                cur.execute(self.q.expire_requests, {"now": now, "limit": limit}).fetchall()
            )
        for row in expired:  # committed
            lifecycle.expired(row["id"], row["owner"])
        return swept

    def forget_idempotency_keys(self, *, now: datetime, limit: int = 1000) -> int:
        """Delete at most ``limit`` keys older than the TTL (maintenance); how many."""
        with self._tx() as cur:
            rows = cur.execute(
                self.q.forget_idempotency_keys,
                {"expired_before": expired_before(now), "limit": limit},
            ).fetchall()
        return len(rows)

    def settled_batches(self, *, limit: int = 100) -> list[UUID]:
        with self._tx() as cur:
            rows = cur.execute(self.q.settled_batches, {"limit": limit}).fetchall()
        return [r["id"] for r in rows]

    def register_daemon(self, info: DaemonInfo, *, now: datetime) -> None:
        with self._tx() as cur:
            cur.execute(
                self.q.daemon_register,
                {
                    "id": info.id,
                    "hostname": info.hostname,
                    "pid": info.pid,
                    "version": info.version,
                    "now": now,
                    "config": Jsonb(json.loads(json.dumps(dict(info.config), default=str))),
                },
            )

    def heartbeat(self, daemon_id: UUID, *, now: datetime) -> bool:
        """Refresh the heartbeat; False when the daemon was declared dead meanwhile."""
        with self._tx() as cur:
            return (
                cur.execute(self.q.daemon_heartbeat, {"id": daemon_id, "now": now}).fetchone()
                is not None
            )

    def stop_daemon(self, daemon_id: UUID, *, now: datetime) -> None:
        with self._tx() as cur:
            cur.execute(self.q.daemon_stop, {"id": daemon_id, "now": now})
            cur.execute(self.q.drop_budget_leases, {"daemon_id": daemon_id})

    def lease_budgets(
        self, daemon_id: UUID, scopes: Sequence[str], *, now: datetime, stale_before: datetime
    ) -> dict[str, BudgetHolders]:
        params = {
            "daemon_id": daemon_id,
            "scopes": sorted(scopes),  # one lock order for every daemon
            "now": now,
            "stale_before": stale_before,
        }
        with self._tx() as cur:
            cur.execute(self.q.lease_budgets, params)
            rows = cur.execute(self.q.budget_holders, params).fetchall()
        return {r["scope"]: BudgetHolders(r["holders"], r["since"]) for r in rows}


def _reclaim_stats(rows: Sequence[Mapping[str, Any]]) -> ReclaimStats:
    failed = sum(1 for r in rows if r["state"] == RequestState.FAILED)
    return ReclaimStats(requeued=len(rows) - failed, failed=failed)


def record_results_params(daemon_id: UUID, results: Sequence[AttemptResult]) -> dict[str, Any]:
    """record_results.sql's parameters: one array per column, in the order of ``results``:
    the fence (the attempt as the daemon held it, the states allowed) and the values the
    core computed."""
    rows = []
    for r in results:
        new, f = r.request, r.request.failure
        rows.append(
            (
                new.id,
                new.attempts,
                r.claimed.started_at,
                _sources_text(r.sources),
                new.state.value,
                new.daemon_id,
                new.claimed_at,
                new.started_at,
                new.finished_at,
                new.not_before,
                new.response_status,
                new.response_body,
                r.body_is_json,
                r.body_raw,
                None if f is None else f.reason.value,
                None if f is None else f.message,
                r.input_tokens,
                r.output_tokens,
            )
        )
    columns = list(zip(*rows, strict=True)) or [()] * len(_RECORD_COLUMNS)
    params: dict[str, Any] = dict(zip(_RECORD_COLUMNS, map(list, columns), strict=True))
    params["daemon_id"] = daemon_id
    return params


_RECORD_COLUMNS = (
    "ids",
    "attempts",
    "held_started",
    "sources",
    "states",
    "owners",
    "claimed_at",
    "started_at",
    "finished_at",
    "not_before",
    "statuses",
    "bodies",
    "bodies_json",
    "bodies_raw",
    "reasons",
    "messages",
    "input_tokens",
    "output_tokens",
)
_SOURCES: dict[frozenset[RequestState], str] = {}


def _sources_text(states: frozenset[RequestState]) -> str:
    """``states`` as record_results.sql reads them (comma-separated), made once per set."""
    text = _SOURCES.get(states)
    if text is None:
        text = _SOURCES[states] = ",".join(sorted(s.value for s in states))
    return text
