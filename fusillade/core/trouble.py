"""What holds a batch back and what went wrong in it, as progress lines show it.

A store reads these with bounded queries (``batch_trouble.sql``, ``error_kinds.sql``),
cheap enough for every progress line of a batch of millions of requests; the display
(``fusillade.progress``) shortens and masks the texts. An error's *kind* is the
classification the store already records: ``http 401`` for an HTTP answer (the
``http_status`` reason and its status), else the failure reason (``timeout``,
``connect``, ``cancelled``, ``expired``...).
"""

from __future__ import annotations

import attrs

from fusillade.core.models import FailureReason

BODY_PREFIX = 500
"""Characters of an error's response body a store returns (enough for its message)."""


@attrs.frozen
class ErrorSample:
    """One recorded error: its reason, the upstream's status (HTTP answers only), our
    message, and the first ``BODY_PREFIX`` characters of the upstream's body."""

    reason: FailureReason
    status: int | None = None
    message: str | None = None
    body: str | None = None

    @property
    def kind(self) -> str:
        if self.reason is FailureReason.HTTP_STATUS and self.status is not None:
            return f"http {self.status}"
        return self.reason.value


@attrs.frozen
class BatchTrouble:
    """What holds a batch back now.

    ``retries_waiting``: pending requests whose last attempt failed, due later (counted
    up to the store's cap: ``capped``); ``rate_limited``: those last answered 429.
    ``latest_retry``: the error of the retry scheduled last; ``latest_failure``: the
    error of the request that failed for good last (among the latest errors).
    """

    retries_waiting: int = 0
    rate_limited: int = 0
    capped: bool = False
    latest_retry: ErrorSample | None = None
    latest_failure: ErrorSample | None = None

    @property
    def latest_error(self) -> ErrorSample | None:
        """The error to show: while retries wait, theirs (the trouble going on), else the
        last failure. A retry's row keeps no time of its failure to compare with."""
        if self.retries_waiting and self.latest_retry is not None:
            return self.latest_retry
        return self.latest_failure or self.latest_retry


NO_TROUBLE = BatchTrouble()


@attrs.frozen
class ErrorKind:
    """How many of a batch's failed, canceled or expired requests failed with one kind of
    error, and the latest of them (``example``)."""

    example: ErrorSample
    count: int

    @property
    def kind(self) -> str:
        return self.example.kind


@attrs.frozen
class ErrorKinds:
    """The most frequent kinds, most frequent first; ``scanned`` error rows were read (the
    latest ones, at most the store's cap: ``capped``)."""

    kinds: tuple[ErrorKind, ...] = ()
    scanned: int = 0
    capped: bool = False
