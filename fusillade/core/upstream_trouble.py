"""Upstream trouble, summarized for the logs: 429s, 5xx, timeouts, broken connections.

Theory of operation
-------------------
A busy daemon may see thousands of 429s a minute; one log line each would drown
everything else. ``TroubleLog`` counts each attempt's outcome per upstream
(``note``) and says what to log when asked (``report``, called about once a second):

- **started**: the first ``report`` after an upstream's first problem since it was last
  quiet, with what was counted so far;
- **ongoing**: then at most one summary per ``interval`` while problems go on (the counts
  of that interval; nothing when there were none);
- **cleared**: once no problem came for a whole ``interval``.

So an episode of any size costs one line, one per ``interval`` while it lasts, and one
at its end, per upstream. Successes are counted only while an upstream is in trouble
(they tell how bad it is). Model labels are the caller's (bounded: the metrics' labels),
and at most ``_MODELS`` of them are kept per report.

Pure: ``now`` is an argument (seconds on any monotonic clock), so tests drive it.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping, Sequence
from typing import Final, Literal

import attrs

from fusillade.core.retry import HttpResponse, Outcome, TransportErrorKind

Problem = Literal["rate_limited", "server_error", "timeout", "connect"]
PROBLEMS: Final[tuple[Problem, ...]] = typing.get_args(Problem)
Phase = Literal["started", "ongoing", "cleared"]

_MODELS: Final = 5  # model labels named in one report, the most affected first
_TIMEOUTS: Final = frozenset(
    {
        TransportErrorKind.CONNECT_TIMEOUT,
        TransportErrorKind.READ_TIMEOUT,
        TransportErrorKind.WRITE_TIMEOUT,
        TransportErrorKind.POOL_TIMEOUT,
    }
)
_BROKEN: Final = frozenset(
    {
        TransportErrorKind.CONNECT,
        TransportErrorKind.READ,
        TransportErrorKind.WRITE,
        TransportErrorKind.PROTOCOL,
    }
)
# how a count reads in a line: (one, many)
_WORDS: Final[Mapping[Problem, tuple[str, str]]] = {
    "rate_limited": ("rate-limited (429)", "rate-limited (429)"),
    "server_error": ("server error (5xx)", "server errors (5xx)"),
    "timeout": ("timeout", "timeouts"),
    "connect": ("connection error", "connection errors"),
}


def problem_of(outcome: Outcome) -> Problem | None:
    """The upstream's trouble an attempt's outcome shows, or ``None`` (a success, or a
    client error such as 400, which is the request's problem, not the upstream's)."""
    if isinstance(outcome, HttpResponse):
        if outcome.status == 429:
            return "rate_limited"
        return "server_error" if outcome.status >= 500 else None
    if outcome.kind in _TIMEOUTS:
        return "timeout"
    return "connect" if outcome.kind in _BROKEN else None


@attrs.frozen
class TroubleReport:
    """One line to log about ``upstream``: what came since its previous report, over
    ``seconds``."""

    upstream: str
    phase: Phase
    counts: Mapping[Problem, int]  # only the problems that came
    succeeded: int
    seconds: float
    models: tuple[tuple[str, int], ...]  # (label, problems), the most affected first

    @property
    def problems(self) -> int:
        return sum(self.counts.values())

    def describe(self, name: str, throttled: Sequence[str] = ()) -> str:
        """The line: ``name`` is how the upstream is shown (never a URL with
        credentials); ``throttled`` the budget limits holding it back now."""
        span = _seconds(self.seconds)
        counts = ", ".join(
            f"{n} {_WORDS[p][0 if n == 1 else 1]}" for p, n in self.counts.items() if n
        )
        if self.phase == "cleared":
            text = f"upstream {name}: trouble cleared"
            text += f" ({counts} in the last {span})" if counts else f", no problem in {span}"
        else:
            started = "trouble started: " if self.phase == "started" else ""
            text = f"upstream {name}: {started}{counts} in the last {span}"
        if self.succeeded:
            text += f"; {self.succeeded} succeeded"
        if throttled:
            text += f"; throttled: {', '.join(throttled)}"
        if self.models and self.phase != "cleared":
            text += "; models: " + ", ".join(f"{m} {n}" for m, n in self.models)
        return text


def _seconds(value: float) -> str:
    return f"{value:.0f}s" if value >= 10 else f"{value:.1f}s"


@attrs.define
class _Upstream:
    since: float  # start of what the counts cover
    last_problem: float
    counts: dict[Problem, int] = attrs.field(factory=dict)
    models: dict[str, int] = attrs.field(factory=dict)
    succeeded: int = 0
    announced: bool = False  # the "started" line was given

    def report(self, upstream: str, phase: Phase, now: float) -> TroubleReport:
        models = sorted(self.models.items(), key=lambda kv: (-kv[1], kv[0]))[:_MODELS]
        report = TroubleReport(
            upstream,
            phase,
            {p: self.counts[p] for p in PROBLEMS if p in self.counts},
            self.succeeded,
            now - self.since,
            tuple(models),
        )
        self.since = now
        self.counts, self.models, self.succeeded = {}, {}, 0
        return report


class TroubleLog:
    """Counts of upstream trouble, and the lines they come to (the module's docstring).

    Memory: one small record per upstream in trouble (upstreams are configured names),
    with at most as many model labels as the caller has.
    """

    def __init__(self, interval: float = 30.0) -> None:
        if interval <= 0:
            raise ValueError("interval must be above 0")
        self.interval = interval
        self._troubled: dict[str, _Upstream] = {}

    def note(self, upstream: str, problem: Problem | None, now: float, model: str = "") -> None:
        """One attempt's outcome at ``upstream``: ``problem`` (``problem_of``), or
        ``None`` when it showed none."""
        state = self._troubled.get(upstream)
        if problem is None:
            if state is not None:
                state.succeeded += 1
            return
        if state is None:
            state = self._troubled[upstream] = _Upstream(since=now, last_problem=now)
        state.counts[problem] = state.counts.get(problem, 0) + 1
        if model:
            state.models[model] = state.models.get(model, 0) + 1
        state.last_problem = now

    def report(self, now: float) -> list[TroubleReport]:
        """What to log now, at most one report per upstream (the module's docstring)."""
        out = []
        for upstream, state in list(self._troubled.items()):
            if not state.announced:
                state.announced = True
                out.append(state.report(upstream, "started", now))
            elif now - state.last_problem >= self.interval:
                del self._troubled[upstream]
                out.append(state.report(upstream, "cleared", now))
            elif now - state.since >= self.interval and state.counts:
                out.append(state.report(upstream, "ongoing", now))
        return out

    def troubled(self) -> frozenset[str]:
        """The upstreams in trouble now (until their "cleared" report)."""
        return frozenset(self._troubled)

    def in_trouble(self, upstream: str) -> bool:
        """Whether ``note`` counts a success at ``upstream`` now (cheap: the hot path
        skips the rest for a success at a quiet upstream)."""
        return upstream in self._troubled
