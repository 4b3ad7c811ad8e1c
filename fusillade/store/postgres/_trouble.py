"""What holds a batch back and what went wrong in it: bounded reads for progress lines."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any
from uuid import UUID

from fusillade.core.models import FailureReason
from fusillade.core.trouble import BODY_PREFIX, BatchTrouble, ErrorKind, ErrorKinds, ErrorSample
from fusillade.store.postgres._base import PostgresBase

# The latest error rows batch_trouble.sql looks through for the last failure.
_RECENT_ERRORS = 1000


def _sample(row: Mapping[str, Any], prefix: str) -> ErrorSample | None:
    reason = row[f"{prefix}_reason"]
    if reason is None:
        return None
    return ErrorSample(
        FailureReason(reason),
        row[f"{prefix}_status"],
        row[f"{prefix}_message"],
        row[f"{prefix}_body"],
    )


class TroubleQueries(PostgresBase):
    def batch_trouble(
        self, owner: str | None, batch_id: UUID, *, now: datetime, cap: int = 10_000
    ) -> BatchTrouble:
        with self._tx() as cur:
            record = self._read_batch(cur, owner, batch_id)
            row = cur.execute(
                self.q.batch_trouble,
                {
                    "batch_id": batch_id,
                    "models": list(record.models),
                    "now": now,
                    "cap": cap,
                    "recent": _RECENT_ERRORS,
                    "body_prefix": BODY_PREFIX,
                },
            ).fetchone()
        assert row is not None  # the aggregate always answers one row
        return BatchTrouble(
            retries_waiting=row["waiting"],
            rate_limited=row["rate_limited"],
            capped=row["waiting"] >= cap,
            latest_retry=_sample(row, "retry"),
            latest_failure=_sample(row, "failure"),
        )

    def error_kinds(
        self, owner: str | None, batch_id: UUID, *, top: int = 5, scan: int = 1_000_000
    ) -> ErrorKinds:
        with self._tx() as cur:
            self._read_batch(cur, owner, batch_id)
            rows = cur.execute(
                self.q.error_kinds,
                {"batch_id": batch_id, "scan": scan, "top": top, "body_prefix": BODY_PREFIX},
            ).fetchall()
        kinds = tuple(
            ErrorKind(
                ErrorSample(FailureReason(r["reason"]), r["status"], r["message"], r["body"]),
                r["n"],
            )
            for r in rows
        )
        scanned = int(rows[0]["scanned"]) if rows else 0
        return ErrorKinds(kinds, scanned, capped=scanned >= scan)

    def live_daemons(self, *, stale_before: datetime) -> int:
        with self._tx() as cur:
            row = cur.execute(self.q.live_daemons, {"stale_before": stale_before}).fetchone()
        assert row is not None
        n: int = row["n"]
        return n
