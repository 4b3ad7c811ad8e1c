"""Rate budgets as the daemon applies them: the facts go in, the core's answers come out.

Every request counts against two scopes: its **upstream** (``max_in_flight``, ``rpm``,
``tpm`` of ``[upstreams.NAME]``: every model sent there) and its **(upstream, model)**
(``[models."NAME"]``, and whatever the provider's answers say about that model: providers
limit per model). Each scope is a ``fusillade.core.scheduling.budget.Budget``; this module
only keeps them, feeds them the clock, the answers and this daemon's part of the
deployment's budget (``set_fraction``, from the leases in PostgreSQL), and asks them how
many requests may start.

A request's life against its budgets: the claim loop asks ``free`` how many requests of
each model may start (and ``group_free`` for each upstream), claims at most that many and
calls ``start`` for each claimed row; the request task reserves its estimated tokens
(``reserve``: waits, with the row held, when the token budget is short), sends, and
settles with ``finish`` (always, aborted or not), which gives back what the estimate
over-reserved and lets the budget learn from the answer's rate-limit headers or 429.

Model scopes are made as models are seen; requests name models, so a scope that has
learned nothing and is idle is dropped when there are more than ``_MAX_MODEL_SCOPES``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from datetime import datetime

import attrs

from fusillade.core.retry import HttpResponse
from fusillade.core.scheduling.budget import UNLIMITED, Budget, BudgetState
from fusillade.core.scheduling.headers import ProviderLimits, parse_limits
from fusillade.core.scheduling.tokens import estimate_tokens
from fusillade.runtime.config import DaemonConfig

_MAX_MODEL_SCOPES = 1024
# requests in flight to an upstream that has not answered yet (docs/scheduling.md)
_SLOW_START = 4
# weight of a new token estimate in a scope's running average (for admit's tpm guess)
_AVERAGE_WEIGHT = 0.1


# (upstream, None): the upstream's scope; (upstream, model): the model's on that upstream
Scope = tuple[str, str | None]


@attrs.frozen
class Reservation:
    """What one request holds: its scopes and the tokens it reserved in each."""

    scopes: tuple[Scope, ...]
    tokens: int


@attrs.frozen
class ScopeState:
    """A scope's state for metrics and the progress line."""

    scope: Scope
    state: BudgetState


class Budgets:
    def __init__(self, config: DaemonConfig) -> None:
        self._config = config
        self._budgets: dict[Scope, Budget] = {}
        self._average: dict[Scope, float] = {}  # running mean of token estimates
        # this daemon's part of each scope leased (a limited scope not leased yet: none)
        self._fractions: dict[Scope, float] = {}
        self._last_used: dict[Scope, float] = {}  # asked to admit or started, loop time
        self._in_flight: dict[str, int] = {}  # per upstream, for the per-daemon default cap
        self.lease_wanted = False  # a limited scope is in use without a lease
        self._caps: dict[str, int | None] = {}  # upstream -> per-daemon cap (config)
        self._unleased: set[Scope] = set()  # limited scopes whose part is 0 for now
        default = config.default_max_output_tokens
        self._first_guess = float(default + 256)

    # --- scopes ---------------------------------------------------------------------

    def upstream_of(self, model: str) -> str | None:
        return self._config.upstream_name_for(model)

    def scopes_of(self, model: str) -> tuple[Scope, ...]:
        upstream = self.upstream_of(model)
        if upstream is None:
            return ()  # not routable: the request fails at once, nothing to budget
        return ((upstream, None), (upstream, model))

    def _budget(self, scope: Scope, now: float) -> Budget:
        budget = self._budgets.get(scope)
        if budget is None:
            if len(self._budgets) >= _MAX_MODEL_SCOPES:
                self._forget_idle(now)
            # slow start is the upstream's: its first answer, whichever model, ends it
            upstream = self._config.upstreams[scope[0]]
            slow = scope[1] is None and upstream.slow_start
            slow_start = _SLOW_START if slow else UNLIMITED
            budget = Budget(self._config.budget_limits(*scope), now=now, slow_start=slow_start)
            self._budgets[scope] = budget
            self._apply_fraction(scope, budget, now)
        return budget

    def _apply_fraction(self, scope: Scope, budget: Budget, now: float) -> None:
        """A limited scope's budget is the deployment's: until a lease says which part is
        this daemon's, it has none (so daemons starting together never add up to more)."""
        fraction = self._fractions.get(scope)
        if fraction is None:
            if not self._limited(scope, budget, now):
                return
            fraction = 0.0
            self.lease_wanted = True
        budget.set_fraction(fraction, now)
        if fraction == 0.0:
            self._unleased.add(scope)
        else:
            self._unleased.discard(scope)

    def _limited(self, scope: Scope, budget: Budget, now: float) -> bool:
        """Whether the scope's budget is the deployment's: configured, or learned from the
        provider (an AIMD estimate and slow start are this daemon's own)."""
        limits = self._config.budget_limits(*scope)
        configured = (limits.max_in_flight, limits.rpm, limits.tpm) != (None, None, None)
        return configured or budget.snapshot(now).learned

    def _forget_idle(self, now: float) -> None:
        """Drop the model scopes that are idle and have learned nothing, with all that is
        kept per scope (requests name models: the names must not grow these maps)."""
        for scope, budget in list(self._budgets.items()):
            if scope[1] is None:
                continue  # an upstream's scope: bounded by the configuration
            state = budget.snapshot(now)
            if state.in_flight == 0 and state.reserved_tokens == 0 and not state.learned:
                del self._budgets[scope]
                for kept in (self._average, self._last_used, self._fractions):
                    kept.pop(scope, None)
                self._unleased.discard(scope)

    # --- the claim loop -------------------------------------------------------------

    def free(self, models: Iterable[str], now: float) -> dict[str, int]:
        """Requests of each model its model scope would admit now (upstreams: ``group_free``)."""
        out = {}
        for model in models:
            scopes = self.scopes_of(model)
            out[model] = self._admit(scopes[1], now) if scopes else UNLIMITED
        return out

    def group_free(self, models: Iterable[str], now: float) -> dict[str, int]:
        """Requests each upstream of ``models`` would admit now, all its models together:
        its budget, and its per-daemon cap when no ``max_in_flight`` is configured."""
        upstreams = {u for m in models if (u := self.upstream_of(m)) is not None}
        out = {}
        for u in upstreams:
            free = self._admit((u, None), now)
            if u not in self._caps:
                self._caps[u] = self._config.upstream_cap(u)
            cap = self._caps[u]
            if cap is not None:
                free = min(free, cap - self._in_flight.get(u, 0))
            out[u] = max(0, free)
        return out

    def _admit(self, scope: Scope, now: float) -> int:
        self._last_used[scope] = now
        if scope in self._unleased:
            return 0  # no part of the deployment's budget yet (the lease loop is asked)
        average = self._average.get(scope, self._first_guess)
        return min(UNLIMITED, self._budget(scope, now).admit(now, tokens_per_request=average))

    def start(self, model: str, now: float) -> None:
        """One request of ``model`` was claimed and will be sent."""
        scopes = self.scopes_of(model)
        for scope in scopes:
            self._last_used[scope] = now
            self._budget(scope, now).start(now)
        if scopes:
            upstream = scopes[0][0]
            self._in_flight[upstream] = self._in_flight.get(upstream, 0) + 1

    def next_change(self, now: float) -> float | None:
        """When some scope may admit more without a request finishing (None: never)."""
        times = [t for b in self._budgets.values() if (t := b.next_change(now)) is not None]
        return min(times) if times else None

    # --- the request task -----------------------------------------------------------

    def estimate(self, model: str, body: str) -> Reservation:
        tokens = estimate_tokens(body, default_max_output=self._config.default_max_output_tokens)
        scopes = self.scopes_of(model)
        for scope in scopes:
            old = self._average.get(scope, self._first_guess)
            self._average[scope] = old + _AVERAGE_WEIGHT * (tokens - old)
        return Reservation(scopes, tokens)

    def reserve_wait(self, reservation: Reservation, now: float) -> float:
        """Seconds until every scope can hold the reservation (0: reserve now)."""
        waits = [
            self._budget(s, now).reserve_wait(reservation.tokens, now) for s in reservation.scopes
        ]
        return max(waits, default=0.0)

    def reserve(self, reservation: Reservation, now: float) -> bool:
        """Reserve in every scope, or in none (False: ``reserve_wait`` first)."""
        if self.reserve_wait(reservation, now) > 0:
            return False
        for scope in reservation.scopes:
            taken = self._budget(scope, now).reserve(reservation.tokens, now)
            assert taken, "reserve_wait said 0"
        return True

    def finish(
        self,
        reservation: Reservation,
        now: float,
        *,
        reserved: bool,
        used: int | None,
        response: HttpResponse | None,
        wall_clock: datetime,
    ) -> None:
        """Settle one request in every scope: always called once per ``start``."""
        status = response.status if response is not None else None
        limits: ProviderLimits | None = None
        if response is not None:
            limits = parse_limits(response.headers, now=wall_clock)
        tokens = reservation.tokens if reserved else 0
        for i, scope in enumerate(reservation.scopes):
            # what an answer says about rate limits is about its model: the model scope
            learned = limits if i == len(reservation.scopes) - 1 else None
            budget = self._budget(scope, now)
            # a 429 whose headers state the limit is the model scope's to learn from; the
            # upstream's scope halves its rate only on 429s that say nothing (AIMD)
            budget.finish(
                now,
                reserved=tokens,
                used=used if reserved else 0,
                status=status,
                limits=learned,
                aimd=learned is not None or limits is None,
            )
            if learned is not None and scope not in self._fractions:
                self._apply_fraction(scope, budget, now)  # it may have become limited
        if reservation.scopes:
            upstream = reservation.scopes[0][0]
            left = self._in_flight[upstream] - 1
            if left:
                self._in_flight[upstream] = left
            else:
                del self._in_flight[upstream]

    # --- across daemons -------------------------------------------------------------

    def leased_scopes(self, now: float, *, recent: float) -> list[Scope]:
        """The scopes whose budget is shared with other daemons and that this daemon uses:
        those with a limit (configured or learned) used in the last ``recent`` seconds or
        with requests in flight."""
        out = []
        for scope, budget in self._budgets.items():
            state = budget.snapshot(now)
            used = now - self._last_used.get(scope, -math.inf) <= recent or state.in_flight
            if used and self._limited(scope, budget, now):
                out.append(scope)
        return out

    def set_fractions(self, fractions: Mapping[Scope, float], now: float) -> None:
        """This daemon's part of each leased scope's budget; a limited scope not named has
        none until leased."""
        self._fractions = dict(fractions)
        self.lease_wanted = False
        for scope, budget in self._budgets.items():
            self._apply_fraction(scope, budget, now)

    # --- visibility -----------------------------------------------------------------

    def states(self, now: float) -> list[ScopeState]:
        return [ScopeState(s, b.snapshot(now)) for s, b in self._budgets.items()]

    def throttled(self, now: float) -> list[str]:
        """Why requests wait now, one entry per limiting reason (``rpm``, ``tpm``,
        ``max_in_flight``, ``slow_start``, ``lease``: waiting for a part of a shared budget)."""
        reasons: set[str] = {"lease"} if self._unleased else set()
        reasons |= {t for b in self._budgets.values() if (t := b.throttle(now)) is not None}
        return sorted(reasons)


def scope_name(scope: Scope) -> str:
    """A scope as its lease names it in the database (unambiguous: names may hold any
    character)."""
    return json.dumps(list(scope), ensure_ascii=False)


def default_max_in_flight(default_concurrency: int, model_limits: Iterable[int]) -> int:
    """An upstream's ``max_in_flight`` when unset: one ``default_concurrency`` for every
    model not configured, plus each configured model's own limit."""
    return default_concurrency + sum(model_limits)
