"""Prometheus metrics. Labels carry model names and reasons, never keys or bodies.

Every label value comes from a bounded set: reasons and loop names are enums or
literals, statuses are 2xx, and a ``model`` label is the name of a model the operator
configured or ``OTHER_MODELS`` (``DaemonConfig.metric_label``), never a name a client
chose. Label sets are never removed, so an unbounded value would grow the exposition
(and the process's memory) forever.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Gauge, Histogram

OTHER_MODELS: Final = "other"
"""The ``model`` label of every model the configuration does not name."""

CLAIMED = Counter("fusillade_requests_claimed", "Requests claimed by this process", ["model"])
IN_FLIGHT = Gauge("fusillade_requests_in_flight", "Requests in flight", ["model"])
COMPLETED = Counter("fusillade_requests_completed", "Requests completed", ["model", "status"])
FAILED = Counter("fusillade_requests_failed", "Requests failed for good", ["model", "reason"])
RETRIED = Counter("fusillade_requests_retried", "Attempts scheduled again", ["model", "reason"])
CANCELED = Counter("fusillade_requests_canceled", "In-flight requests aborted", ["reason"])
LOST_RACES = Counter("fusillade_lost_races", "Results refused by the (state, owner, attempt) fence")
RECLAIMED = Counter("fusillade_requests_reclaimed", "Rows taken back from dead daemons")
PURGED = Counter(
    "fusillade_purged_rows", "Rows removed by the retention purge", ["kind"]
)  # kind: requests (of finished batches), templates (of deleted files)
CLAIM_SECONDS = Histogram("fusillade_claim_seconds", "Duration of one claim statement")
FLUSH_SECONDS = Histogram("fusillade_flush_seconds", "Duration of one result flush")
FLUSH_SIZE = Histogram(
    "fusillade_flush_size", "Results per flush", buckets=(1, 5, 10, 50, 100, 250, 500, 1000)
)
UPSTREAM_SECONDS = Histogram(
    "fusillade_upstream_seconds",
    "Upstream latency per attempt",
    ["model"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
DB_ERRORS = Counter("fusillade_db_errors", "Database calls that failed", ["loop"])
WRITER_FAILURES_IN_A_ROW = Gauge(
    "fusillade_writer_failures_in_a_row",
    "Result writes that failed transiently since the last one that committed (0: healthy)",
)
RESULTS_UNSTORABLE = Counter(
    "fusillade_results_unstorable",
    "Results the database refused, recorded as failed with reason unstorable instead",
)
BUDGET_IN_FLIGHT = Gauge(
    "fusillade_budget_in_flight",
    "Requests in flight against a budget (model: the upstream's own budget when empty)",
    ["upstream", "model"],
)
BUDGET_LIMIT = Gauge(
    "fusillade_budget_limit",
    "This daemon's part of a budget now: configured or learned, after budget_share",
    ["upstream", "model", "kind"],
)
BUDGET_RESERVED_TOKENS = Gauge(
    "fusillade_budget_reserved_tokens",
    "Tokens reserved by requests in flight, not yet settled with their usage",
    ["upstream", "model"],
)
BUDGET_THROTTLED = Gauge(
    "fusillade_budget_throttled",
    "1 while a budget holds requests back, by the limit that does",
    ["upstream", "model", "reason"],
)
WEBHOOK_DELIVERIES = Counter(
    "fusillade_webhook_deliveries",
    "Webhook sends by what they came to (delivered, failed: to be retried, given_up)",
    ["result"],
)
WEBHOOK_OUTBOX_PENDING = Gauge(
    "fusillade_webhook_outbox_pending",
    "Webhook events of the owners this daemon sends for, neither delivered nor given up",
)


class ModelSeries:
    """One model label's series that every request touches, looked up once: ``labels()``
    takes a lock and builds a key on each call, five times a request otherwise
    (docs/performance.md, the httptools profile). Safe to keep: label sets are never
    removed."""

    __slots__ = ("_completed", "claimed", "in_flight", "label", "upstream_seconds")

    def __init__(self, label: str) -> None:
        self.label = label
        self.claimed = CLAIMED.labels(label)
        self.in_flight = IN_FLIGHT.labels(label)
        self.upstream_seconds = UPSTREAM_SECONDS.labels(label)
        self._completed: dict[int, Counter] = {}

    def completed(self, status: int) -> Counter:
        """The ``fusillade_requests_completed`` series of this model and ``status``."""
        child = self._completed.get(status)
        if child is None:
            child = self._completed[status] = COMPLETED.labels(self.label, str(status))
        return child


_SERIES: dict[str, ModelSeries] = {}


def model_series(label: str) -> ModelSeries:
    """The cached series of ``label`` (a bounded set: ``DaemonConfig.metric_label``)."""
    series = _SERIES.get(label)
    if series is None:
        series = _SERIES[label] = ModelSeries(label)
    return series
