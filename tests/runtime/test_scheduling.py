"""Scheduling in virtual time: rate budgets, the upstream cap, fair shares, deadlines.

The real ``Daemon`` on the in-memory repository under ``MockClock(autojump_threshold=0)``
(see test_virtual_time.py for why no sockets). Every expectation is worked out from the
documented rules (docs/scheduling.md) and the configuration in the test, not read back
from the code: a budget of ``B`` per minute paces its starts at ``B / 60`` per second; a
learned limit ``L`` gives ``0.9 L``; an upstream without ``max_in_flight`` takes ``8 x
default_concurrency`` at once for models not configured; owners share slots by weight;
a shorter completion window goes first within an owner.
"""

from __future__ import annotations

import itertools
import json
from datetime import timedelta
from typing import Any

import attrs
import httpx
import trio
import trio.testing
from prometheus_client import REGISTRY
from test_virtual_time import add_batch, clock, config

from fusillade.core.scheduling.budget import BudgetLimits
from fusillade.runtime.config import Upstream
from fusillade.runtime.daemon import Daemon
from fusillade.store.memory import MemoryRepository

__all__ = ["clock"]  # the fixture, used by name


@attrs.define
class Upstream_:
    """Answers every request after ``latency`` seconds with ``headers`` (and a usage of
    ``usage`` tokens when set), noting each arrival's virtual time by custom id."""

    latency: float = 0.0
    headers: dict[str, str] = attrs.Factory(dict)
    usage: int | None = None
    hold: bool = False
    arrivals: dict[str, float] = attrs.Factory(dict)
    in_flight: int = 0
    peak: int = 0

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.arrivals[request.headers["x-fusillade-custom-id"]] = trio.current_time()
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            if self.hold:
                await trio.sleep_forever()
            await trio.sleep(self.latency)  # the fake upstream's latency
        finally:
            self.in_flight -= 1
        body: dict[str, Any] = {"ok": True}
        if self.usage is not None:
            body["usage"] = {"prompt_tokens": self.usage - 1, "completion_tokens": 1}
        return httpx.Response(200, headers=self.headers, content=json.dumps(body).encode())

    def times(self, prefix: str = "") -> list[float]:
        return sorted(t for cid, t in self.arrivals.items() if cid.startswith(prefix))


def start(repo: Any, upstream: Upstream_, **overrides: Any) -> Daemon:
    return Daemon(repo, config(**overrides), transport=httpx.MockTransport(upstream))


def budget(**limits: Any) -> dict[str, BudgetLimits]:
    return {"up": BudgetLimits(**limits)}


def in_window(times: list[float], lo: float, hi: float) -> int:
    return sum(1 for t in times if lo <= t < hi)


def most_in_any_window(times: list[float], width: float) -> int:
    return max((in_window(times, t, t + width) for t in times), default=0)


# --------------------------------------------------------------------------- budgets


async def test_a_configured_rpm_paces_the_starts(
    nursery: trio.Nursery, clock: trio.testing.MockClock
) -> None:
    # 60 rpm is one request a second, paced: the bucket holds 2, so any 1 s window sees at
    # most 2 + 1 starts, any 2 s window at most 2 + 2, and none is held back: 10 requests
    # within about 9 s
    repo = MemoryRepository()
    add_batch(repo, "c", owner="alice", models=["m"] * 10)
    upstream = Upstream_()
    d = start(repo, upstream, default_concurrency=16, upstream_budgets=budget(rpm=60))
    await nursery.start(d.run)
    await trio.sleep_until(5.5)
    # visible: why requests wait (the progress line), and the budget in /metrics
    assert d.statistics().throttled == ("rpm",)
    labels = {"upstream": "up", "model": ""}
    assert REGISTRY.get_sample_value("fusillade_budget_limit", {**labels, "kind": "rpm"}) == 60
    assert REGISTRY.get_sample_value("fusillade_budget_throttled", {**labels, "reason": "rpm"}) == 1
    await trio.sleep_until(30)
    times = upstream.times()
    assert len(times) == 10
    assert most_in_any_window(times, 1.0) <= 3
    assert most_in_any_window(times, 2.0) <= 4
    assert times[-1] <= 10.5


async def test_limits_learned_from_headers_after_a_slow_start(
    nursery: trio.Nursery, clock: trio.testing.MockClock
) -> None:
    # Nothing configured. Until the first answer, 4 requests (slow start); the answers
    # say 120 rpm, so the budget is 0.9 * 120 = 108 rpm: 1.8 a second, about 36 in 20 s.
    repo = MemoryRepository()
    add_batch(repo, "c", owner="alice", models=["m"] * 80)
    headers = {"x-ratelimit-limit-requests": "120", "x-ratelimit-remaining-requests": "119"}
    upstream = Upstream_(latency=0.5, headers=headers)
    cfg: dict[str, Any] = {"default_concurrency": 64}
    cfg["upstreams"] = {"up": Upstream("http://upstream.invalid/v1", slow_start=True)}
    d = start(repo, upstream, **cfg)
    await nursery.start(d.run)
    await trio.sleep_until(0.4)
    assert len(upstream.times()) == 4
    await trio.sleep_until(22)
    steady = in_window(upstream.times(), 1.0, 21.0)
    assert 33 <= steady <= 38
    assert most_in_any_window(upstream.times(), 1.0) <= 4  # paced, never a burst


@attrs.define
class RefusesOnce(Upstream_):
    """As ``Upstream_``, but answers its ``refuse_at``-th request 429 (same headers)."""

    refuse_at: int = 0

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        refuse = len(self.arrivals) + 1 == self.refuse_at  # before this one arrives
        answer = await super().__call__(request)
        if refuse:
            return httpx.Response(429, headers=self.headers, content=b'{"error": {}}')
        return answer


async def test_a_429_that_states_its_limit_keeps_the_learned_pace(
    nursery: trio.Nursery, clock: trio.testing.MockClock
) -> None:
    # The headers say 1,200 rpm: the budget is 0.9 * 1200 = 1,080 rpm, 18 a second. One
    # 429 carrying the same headers (the provider's short window) says the limit is that
    # one, already known: the pace stays 18 a second (about 180 in 10 s), not an AIMD
    # estimate halved from the recent rate.
    repo = MemoryRepository()
    add_batch(repo, "c", owner="alice", models=["m"] * 400)
    headers = {"x-ratelimit-limit-requests": "1200", "x-ratelimit-remaining-requests": "1100"}
    upstream = RefusesOnce(latency=0.05, headers=headers, refuse_at=40)
    d = start(repo, upstream, default_concurrency=64)
    await nursery.start(d.run)
    await trio.sleep_until(16)
    assert 165 <= in_window(upstream.times(), 5.0, 15.0) <= 185


async def test_an_upstream_caps_many_model_names(
    nursery: trio.Nursery, clock: trio.testing.MockClock
) -> None:
    # 40 invented model names, default_concurrency 2, no max_in_flight: the upstream takes
    # 8 x 2 = 16 at once, not 40 x 2 = 80
    repo = MemoryRepository()
    add_batch(repo, "c", owner="alice", models=[f"invented-{i}" for i in range(40)] * 2)
    upstream = Upstream_(hold=True)
    d = start(repo, upstream, default_concurrency=2)
    await nursery.start(d.run)
    await trio.sleep_until(10)
    assert upstream.peak == 16


async def test_a_configured_max_in_flight_caps_the_upstream(
    nursery: trio.Nursery, clock: trio.testing.MockClock
) -> None:
    repo = MemoryRepository()
    add_batch(repo, "c", owner="alice", models=["a", "b", "c"] * 10)
    upstream = Upstream_(hold=True)
    d = start(repo, upstream, default_concurrency=8, upstream_budgets=budget(max_in_flight=5))
    await nursery.start(d.run)
    await trio.sleep_until(10)
    assert upstream.peak == 5


async def test_token_reservations_settle_with_the_reported_usage(
    nursery: trio.Nursery, clock: trio.testing.MockClock
) -> None:
    # 6,000 tpm refills 100 tokens a second. Each request reserves about 1,000 tokens
    # (max_tokens 1000 plus its body's quarter), more than the bucket holds, so it goes
    # when the bucket is full and leaves a debt of about 1,000. Settled with a usage of
    # 20 tokens, the debt is given back: the next goes within a fraction of a second.
    # Without a usage the reservation stands: about 10 s between requests.
    body = {"max_tokens": 1000}
    fast_repo, slow_repo = MemoryRepository(), MemoryRepository()
    add_batch(fast_repo, "c", owner="alice", models=["m"] * 5, body=body)
    add_batch(slow_repo, "c", owner="alice", models=["m"] * 5, body=body)
    reported, silent = Upstream_(usage=20), Upstream_()
    for repo, upstream in ((fast_repo, reported), (slow_repo, silent)):
        d = start(repo, upstream, default_concurrency=8, upstream_budgets=budget(tpm=6000))
        await nursery.start(d.run)
    await trio.sleep_until(60)
    assert reported.times()[-1] < 3
    gaps = [b - a for a, b in itertools.pairwise(silent.times())]
    assert len(gaps) == 4
    assert all(9.5 <= g <= 11 for g in gaps)


async def test_three_daemons_share_one_budget(
    nursery: trio.Nursery, clock: trio.testing.MockClock
) -> None:
    # 180 rpm for the deployment: three daemons on one database together never start
    # more than 180 in a minute (plus the one-second burst of each), and use most of it
    repo = MemoryRepository()
    add_batch(repo, "c", owner="alice", models=["m"] * 400)
    upstream = Upstream_(latency=0.2)
    for _ in range(3):
        d = start(repo, upstream, default_concurrency=16, upstream_budgets=budget(rpm=180))
        await nursery.start(d.run)
    await trio.sleep_until(125)
    times = upstream.times()
    assert most_in_any_window(times, 60.0) <= 180 + 3
    assert in_window(times, 10.0, 70.0) >= 150


# ----------------------------------------------------------------------- fair shares


async def test_owners_share_a_models_slots(
    nursery: trio.Nursery, clock: trio.testing.MockClock
) -> None:
    # alice's 200 requests come first (earlier deadline), bob's 10 after; 4 slots, 1 s
    # each. Fair: bob gets 2 slots while both have work, so his 10 are sent within 5 s
    # (first-come would leave him 50 s behind alice), and alice keeps the other 2.
    repo = MemoryRepository()
    add_batch(repo, "a", owner="alice", models=["m"] * 200)
    add_batch(repo, "b", owner="bob", models=["m"] * 10)
    upstream = Upstream_(latency=1.0)
    d = start(repo, upstream, default_concurrency=4)
    await nursery.start(d.run)
    await trio.sleep_until(6)
    assert len(upstream.times("b")) == 10
    assert max(upstream.times("b")) < 5
    assert in_window(upstream.times("a"), 0, 5) >= 10


async def test_owner_weights(nursery: trio.Nursery, clock: trio.testing.MockClock) -> None:
    # bob weighs 3, alice 1: of 4 slots bob holds 3 while both have work
    repo = MemoryRepository()
    add_batch(repo, "a", owner="alice", models=["m"] * 100)
    add_batch(repo, "b", owner="bob", models=["m"] * 100)
    upstream = Upstream_(latency=1.0)
    d = start(repo, upstream, default_concurrency=4, owner_weights={"bob": 3.0})
    await nursery.start(d.run)
    await trio.sleep_until(10.5)
    assert in_window(upstream.times("b"), 0, 10) == 30
    assert in_window(upstream.times("a"), 0, 10) == 10


async def test_an_owner_alone_gets_every_slot(
    nursery: trio.Nursery, clock: trio.testing.MockClock
) -> None:
    repo = MemoryRepository()
    add_batch(repo, "a", owner="alice", models=["m"] * 40)
    upstream = Upstream_(latency=1.0)
    d = start(repo, upstream, default_concurrency=4)
    await nursery.start(d.run)
    await trio.sleep_until(10.5)
    assert len(upstream.times("a")) == 40


async def test_a_shorter_window_goes_first_within_an_owner(
    nursery: trio.Nursery, clock: trio.testing.MockClock
) -> None:
    # the same owner's 24h batch was created first, its 1h batch after: the 1h batch has
    # every slot until it is done (P11)
    repo = MemoryRepository()
    add_batch(repo, "day", owner="alice", models=["m"] * 40, window=timedelta(hours=24))
    add_batch(repo, "hour", owner="alice", models=["m"] * 10, window=timedelta(hours=1))
    upstream = Upstream_(latency=1.0)
    d = start(repo, upstream, default_concurrency=2)
    await nursery.start(d.run)
    await trio.sleep_until(30)
    assert max(upstream.times("hour")) < 5
    assert min(upstream.times("day")) >= 5
