"""Failure classification and retry scheduling for one attempt.

Theory of operation
-------------------
The dispatcher turns what happened to an attempt into an ``Outcome`` (an ``HttpResponse``
or a ``TransportError``; httpx exceptions never reach this module). ``classify`` sorts it
into ``Success``, ``Retriable`` or ``Permanent``; for the last two, ``decide`` returns
``RetryAt`` (put the request back to pending until ``not_before``) or ``GiveUp`` (fail it).
Both are values: nothing here raises to say "retry later", reads a clock or draws a random
number. ``now`` and ``jitter`` are arguments, so one input always gives one answer.

Precedence when classifying an HTTP response: 2xx is success; otherwise an
``x-should-retry: true|false`` header wins; then the policy's ``extra_permanent_statuses``
and ``extra_retriable_statuses``; then the built-in rule (408, 409, 429 and 5xx retriable,
everything else permanent, including 1xx and 3xx: a batch request answered with a redirect
is misconfigured, and sending it again will not help).
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from types import MappingProxyType

import attrs

from fusillade.core.models import Failure, FailureReason

# ---------------------------------------------------------------------------- outcomes


def _lower_headers(headers: Mapping[str, str]) -> Mapping[str, str]:
    # Lower-cased once here, so every later lookup is a plain dict access; read-only so
    # the frozen record really is immutable.
    return MappingProxyType({k.lower(): v for k, v in headers.items()})


@attrs.frozen
class HttpResponse:
    """The upstream answered: its status, headers (keys lower-cased) and body text."""

    status: int
    headers: Mapping[str, str] = attrs.field(factory=dict, converter=_lower_headers, hash=False)
    body: str = ""


class TransportErrorKind(enum.StrEnum):
    """Why no HTTP response arrived. One member per httpx failure the dispatcher maps."""

    CONNECT_TIMEOUT = "connect_timeout"
    READ_TIMEOUT = "read_timeout"
    WRITE_TIMEOUT = "write_timeout"
    POOL_TIMEOUT = "pool_timeout"
    CONNECT = "connect"  # refused, DNS failure, TLS handshake failure
    READ = "read"  # connection reset or closed while reading
    WRITE = "write"  # connection reset or closed while writing
    PROTOCOL = "protocol"  # server disconnected without a response, malformed HTTP
    BUILDER = "builder"  # the request cannot be built: invalid URL, CR/LF in a header...
    LOST = "lost"  # the attempt died with its daemon (found by reclaim)


_TRANSPORT: Mapping[TransportErrorKind, tuple[FailureReason, bool, str]] = {
    # kind: (stored reason, retriable, default message)
    TransportErrorKind.CONNECT_TIMEOUT: (FailureReason.TIMEOUT, True, "connect timed out"),
    TransportErrorKind.READ_TIMEOUT: (FailureReason.TIMEOUT, True, "read timed out"),
    TransportErrorKind.WRITE_TIMEOUT: (FailureReason.TIMEOUT, True, "write timed out"),
    TransportErrorKind.POOL_TIMEOUT: (
        FailureReason.TIMEOUT,
        True,
        "timed out waiting for a connection from the pool",
    ),
    TransportErrorKind.CONNECT: (FailureReason.CONNECT, True, "could not connect"),
    TransportErrorKind.READ: (FailureReason.CONNECT, True, "connection lost while reading"),
    TransportErrorKind.WRITE: (FailureReason.CONNECT, True, "connection lost while writing"),
    TransportErrorKind.PROTOCOL: (FailureReason.CONNECT, True, "upstream broke the protocol"),
    TransportErrorKind.BUILDER: (FailureReason.BUILDER, False, "invalid request"),
    TransportErrorKind.LOST: (FailureReason.LOST, True, "attempt lost with its daemon"),
}


@attrs.frozen
class TransportError:
    """No HTTP response: ``kind`` says why, ``message`` adds detail (never the api key)."""

    kind: TransportErrorKind
    message: str = ""


Outcome = HttpResponse | TransportError

# --------------------------------------------------------------------------- policy


def _status_set(values: Iterable[int]) -> frozenset[int]:
    return frozenset(values)


def _non_negative(_: object, attribute: attrs.Attribute[timedelta], value: timedelta) -> None:
    if value < timedelta(0):
        raise ValueError(f"{attribute.name} must not be negative, got {value}")


def _positive(_: object, attribute: attrs.Attribute[timedelta], value: timedelta) -> None:
    if value <= timedelta(0):
        raise ValueError(f"{attribute.name} must be positive, got {value}")


@attrs.frozen
class RetryPolicy:
    """How failures are retried.

    Attributes:
        max_attempts: attempts allowed per budget, counting the first one.
        base: backoff before the first retry (before jitter).
        factor: growth of the backoff per used attempt.
        cap: the largest computed backoff (a ``retry-after`` may exceed it).
        retry_after_ceiling: a ``retry-after`` longer than this is ignored and the computed
            backoff used instead, so one upstream cannot park a request for a day.
        extra_retriable_statuses: statuses retried on top of 408, 409, 429 and 5xx.
        extra_permanent_statuses: statuses that fail at once although they would
            otherwise be retried (e.g. 501). Must not overlap the retriable extras.
        deadline_margin: retries are never scheduled at or after ``deadline - margin``.
    """

    max_attempts: int = attrs.field(default=6, validator=attrs.validators.ge(1))
    base: timedelta = attrs.field(default=timedelta(seconds=1), validator=_positive)
    factor: float = attrs.field(default=2.0, validator=attrs.validators.ge(1.0))
    cap: timedelta = attrs.field(default=timedelta(seconds=60), validator=_positive)
    retry_after_ceiling: timedelta = attrs.field(
        default=timedelta(seconds=300), validator=_non_negative
    )
    extra_retriable_statuses: frozenset[int] = attrs.field(
        default=frozenset({499}), converter=_status_set
    )
    extra_permanent_statuses: frozenset[int] = attrs.field(
        default=frozenset(), converter=_status_set
    )
    deadline_margin: timedelta = attrs.field(default=timedelta(0), validator=_non_negative)

    def __attrs_post_init__(self) -> None:
        both = self.extra_retriable_statuses & self.extra_permanent_statuses
        if both:
            raise ValueError(f"statuses both retriable and permanent: {sorted(both)}")
        if not math.isfinite(self.factor):
            raise ValueError(f"factor must be finite, got {self.factor}")


DEFAULT_POLICY = RetryPolicy()

# --------------------------------------------------------------------------- classify


@attrs.frozen
class Success:
    """A 2xx response: store it and complete the request."""

    response: HttpResponse


@attrs.frozen
class Retriable:
    """A failure worth another attempt, budget and deadline permitting."""

    failure: Failure
    outcome: Outcome

    @property
    def rate_limited(self) -> bool:
        return _is_429(self.outcome)


@attrs.frozen
class Permanent:
    """A failure that another attempt would repeat."""

    failure: Failure
    outcome: Outcome

    @property
    def rate_limited(self) -> bool:
        return _is_429(self.outcome)


Classification = Success | Retriable | Permanent


def _is_429(outcome: Outcome) -> bool:
    return isinstance(outcome, HttpResponse) and outcome.status == HTTPStatus.TOO_MANY_REQUESTS


_BUILTIN_RETRIABLE = frozenset({408, 409, 429})


def _status_retriable(status: int, headers: Mapping[str, str], policy: RetryPolicy) -> bool:
    override = headers.get("x-should-retry", "").strip().lower()
    if override == "true":
        return True
    if override == "false":
        return False
    if status in policy.extra_permanent_statuses:
        return False
    if status in policy.extra_retriable_statuses:
        return True
    return status in _BUILTIN_RETRIABLE or 500 <= status <= 599


def _status_message(status: int) -> str:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        return f"upstream answered HTTP {status}"
    return f"upstream answered HTTP {status} {phrase}"


def classify(outcome: Outcome, policy: RetryPolicy = DEFAULT_POLICY) -> Classification:
    """Sort one attempt's outcome into success, retriable or permanent failure.

    Failures carry a ``Failure`` ready to store: reason ``http_status`` with the status and
    body for HTTP answers, ``timeout``/``connect``/``builder``/``lost`` for transport ones.
    """
    if isinstance(outcome, HttpResponse):
        if 200 <= outcome.status <= 299:
            return Success(outcome)
        failure = Failure(
            FailureReason.HTTP_STATUS,
            _status_message(outcome.status),
            status=outcome.status,
            body=outcome.body,
        )
        if _status_retriable(outcome.status, outcome.headers, policy):
            return Retriable(failure, outcome)
        return Permanent(failure, outcome)
    reason, retriable, default_message = _TRANSPORT[outcome.kind]
    failure = Failure(reason, outcome.message or default_message)
    return Retriable(failure, outcome) if retriable else Permanent(failure, outcome)


# ------------------------------------------------------------------------ retry-after

_SECONDS = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
_MICROS_PER_SECOND = Decimal(1_000_000)


def _delay_from_decimal(text: str, unit_micros: Decimal) -> timedelta | None:
    """``text`` (a decimal number of units) as a delay; negative is zero, huge is max."""
    if _SECONDS.fullmatch(text) is None:
        return None
    micros = (Decimal(text) * unit_micros).to_integral_value(ROUND_HALF_EVEN)
    if micros <= 0:
        return timedelta(0)
    try:
        return timedelta(microseconds=int(micros))
    except OverflowError:
        # A valid but absurd value: larger than any ceiling, so it is never honoured.
        return timedelta.max


def parse_retry_after(headers: Mapping[str, str], now: datetime) -> timedelta | None:
    """The delay an upstream asked for, or ``None`` when it asked for none we can read.

    ``retry-after-ms`` (a decimal number of milliseconds) is read first, then
    ``retry-after`` as decimal seconds or an HTTP-date taken relative to ``now``. Header
    names are matched case-insensitively. A time in the past or a negative number gives
    zero; a value too large to represent gives ``timedelta.max``; an unreadable value is
    skipped (an unreadable ``retry-after-ms`` falls back to ``retry-after``).
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    ms = lowered.get("retry-after-ms")
    if ms is not None:
        delay = _delay_from_decimal(ms.strip(), Decimal(1000))
        if delay is not None:
            return delay
    value = lowered.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    delay = _delay_from_decimal(value, _MICROS_PER_SECOND)
    if delay is not None:
        return delay
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    # HTTP-dates are GMT; "-0000" yields a naive result, which means UTC as well.
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    return max(when - now, timedelta(0))


# ----------------------------------------------------------------------------- decide


class DelaySource(enum.StrEnum):
    BACKOFF = "backoff"
    RETRY_AFTER = "retry_after"


class GiveUpReason(enum.StrEnum):
    PERMANENT = "permanent"  # the failure itself is permanent
    BUDGET_SPENT = "budget_spent"  # max_attempts used
    DEADLINE = "deadline"  # the next attempt would be due at or after the deadline


@attrs.frozen
class RetryAt:
    """Put the request back to pending, due at ``not_before`` (``now + delay``).

    ``pause_until`` is set for a 429: stop claiming for that model on this daemon until
    then, so the other slots do not hammer a rate-limited upstream.
    """

    not_before: datetime
    delay: timedelta
    failure: Failure
    source: DelaySource
    pause_until: datetime | None = None


@attrs.frozen
class GiveUp:
    """Fail the request with ``failure``; ``reason`` says why no retry was scheduled.

    ``pause_until`` is set for a 429 as in ``RetryAt``: other requests of the model are
    still rate limited even when this one has given up.
    """

    failure: Failure
    reason: GiveUpReason
    pause_until: datetime | None = None


Decision = RetryAt | GiveUp


def backoff(budget_used: int, *, jitter: float, policy: RetryPolicy = DEFAULT_POLICY) -> timedelta:
    """Full-jitter exponential backoff after ``budget_used`` attempts (the first is 1).

    Returns ``jitter * min(cap, base * factor ** (budget_used - 1))``; never above ``cap``,
    never negative. ``budget_used`` below 1 is treated as 1.

    Raises:
        ValueError: ``jitter`` outside ``[0, 1)``.
    """
    if not 0.0 <= jitter < 1.0:
        raise ValueError(f"jitter must be in [0, 1), got {jitter}")
    exponent = max(0, budget_used - 1)
    cap_s = policy.cap.total_seconds()
    try:
        raw_s = policy.base.total_seconds() * policy.factor**exponent
    except OverflowError:  # factor**exponent beyond a float: far past any cap
        raw_s = math.inf
    return timedelta(seconds=jitter * min(cap_s, raw_s))


def decide(
    classification: Retriable | Permanent,
    *,
    budget_used: int,
    now: datetime,
    deadline: datetime,
    jitter: float,
    policy: RetryPolicy = DEFAULT_POLICY,
) -> Decision:
    """Retry the failed attempt later, or give up.

    Args:
        classification: what ``classify`` said about the attempt.
        budget_used: attempts used in the current budget, including the one that failed
            (``Request.budget_used``).
        now: the current time.
        deadline: the batch's ``expires_at``; no retry is due at or after
            ``deadline - policy.deadline_margin``.
        jitter: a uniform draw from ``[0, 1)``, supplied by the caller.
        policy: the retry configuration.

    Returns:
        ``GiveUp`` for a permanent failure, a spent budget or a retry that would land at or
        past the deadline; otherwise ``RetryAt`` with ``not_before = now + delay``, where
        ``delay`` is the upstream's retry-after if it is within
        ``policy.retry_after_ceiling``, else ``backoff(budget_used, jitter=jitter)``.

    Raises:
        ValueError: ``jitter`` outside ``[0, 1)``.
    """
    delay = backoff(budget_used, jitter=jitter, policy=policy)
    source = DelaySource.BACKOFF
    outcome = classification.outcome
    if isinstance(outcome, HttpResponse):
        asked = parse_retry_after(outcome.headers, now)
        if asked is not None and asked <= policy.retry_after_ceiling:
            delay, source = asked, DelaySource.RETRY_AFTER
    failure = classification.failure
    pause_until = now + delay if classification.rate_limited else None
    if isinstance(classification, Permanent):
        return GiveUp(failure, GiveUpReason.PERMANENT, pause_until)
    if budget_used >= policy.max_attempts:
        return GiveUp(failure, GiveUpReason.BUDGET_SPENT, pause_until)
    not_before = now + delay
    if not_before >= deadline - policy.deadline_margin:
        return GiveUp(failure, GiveUpReason.DEADLINE, pause_until)
    return RetryAt(not_before, delay, failure, source, pause_until)
