"""The daemon's timing in virtual time: the real ``Daemon`` on the in-memory repository.

Each test runs under trio's ``MockClock(autojump_threshold=0)`` (the ``clock`` fixture;
pytest-trio runs a test on a clock passed to it): whenever every task waits, the clock
jumps to the next deadline, so minutes of backoff, pauses, heartbeats and deadlines take
milliseconds. Both sides run on the event loop without threads or sockets: the in-memory
repository is called directly (``blocking = False``), and the upstream is an
``httpx.MockTransport`` served by the same scheduler. (A loopback socket would not do:
the clock may jump while a read waits for the kernel, so a request could seem to take as
long as the next timer.) The daemon's clock is anchored on the host's, which reads ``T0``
here, so virtual second ``t`` is ``T0 + t`` in the store.

Every expected time below is worked out from the configuration in the test, not read
back from the code. The memory store is held equal to PostgreSQL, for the operations
these tests rely on (claims of due retries, sweeps and aborts at the deadline, reclaims
of silent daemons, heartbeats), by ``tests/integration/test_store_equivalence.py``.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import attrs
import httpx
import pytest
import trio
import trio.testing

import fusillade.runtime.clock
from fusillade.core.models import RequestState, RequestTemplate
from fusillade.core.retry import RetryPolicy
from fusillade.errors import StoreUnavailable
from fusillade.runtime.config import DaemonConfig, Upstream
from fusillade.runtime.daemon import Daemon
from fusillade.store.interface import BatchSpec, RequestSummary
from fusillade.store.memory import MemoryRepository

OWNER = "alice"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@attrs.frozen
class Answer:
    status: int = 200
    headers: dict[str, str] = attrs.Factory(dict)
    hold: bool = False  # never answer (until the daemon gives up on the request)


OK = Answer()


@attrs.define
class ScriptedUpstream:
    """Answers the ``n``-th attempt at a custom id with ``script[custom_id][n]`` (the last
    entry repeats; an id not in the script gets ``OK``) and notes the virtual time of
    every attempt."""

    script: dict[str, list[Answer]] = attrs.Factory(dict)
    arrivals: dict[str, list[float]] = attrs.Factory(dict)

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        custom_id = request.headers["x-fusillade-custom-id"]
        seen = self.arrivals.setdefault(custom_id, [])
        seen.append(trio.current_time())
        answers = self.script.get(custom_id, [OK])
        answer = answers[min(len(seen), len(answers)) - 1]
        if answer.hold:
            await trio.sleep_forever()
        body = b'{"ok": true}' if answer.status == 200 else b'{"error": {"message": "no"}}'
        return httpx.Response(answer.status, headers=answer.headers, content=body)

    def times(self) -> list[tuple[float, str]]:
        """Every attempt, in order of time."""
        return sorted((t, cid) for cid, ts in self.arrivals.items() for t in ts)


class Partitionable:
    """The shared repository as one daemon reaches it, until ``cut`` (every call then
    fails as a lost connection does)."""

    blocking = False

    def __init__(self, repo: MemoryRepository) -> None:
        self._repo = repo
        self.cut = False

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._repo, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            if self.cut:
                raise StoreUnavailable("connection lost (the test cut it)")
            return method(*args, **kwargs)

        return call


class HeartbeatLog(MemoryRepository):
    """The in-memory repository, noting the time of each heartbeat it receives."""

    def __init__(self) -> None:
        super().__init__()
        self.beats: list[datetime] = []

    def heartbeat(self, daemon_id: UUID, *, now: datetime) -> bool:
        self.beats.append(now)
        return super().heartbeat(daemon_id, now=now)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> trio.testing.MockClock:
    """Virtual time from 0 (the test's trio run uses the clock it is passed), and a host
    clock that reads ``T0``, where the daemon's clock starts."""
    monkeypatch.setattr(fusillade.runtime.clock, "host_time", lambda: T0)
    return trio.testing.MockClock(autojump_threshold=0)


def config(**overrides: Any) -> DaemonConfig:
    settings: dict[str, Any] = {
        "upstreams": {"up": Upstream("http://upstream.invalid/v1", slow_start=False)},
        "default_upstream": "up",
        "poll_interval": 1.0,
        "heartbeat_interval": 5.0,
        "stale_after": 30.0,
        "maintenance_interval": 5.0,
        "cancel_check_interval": 0.5,
        "request_timeout": 3600.0,
        "default_concurrency": 1,
    }
    settings.update(overrides)
    return DaemonConfig(**settings)


def daemon(
    repo: Any,
    upstream: ScriptedUpstream,
    cfg: DaemonConfig,
    jitter: Iterable[float] = itertools.repeat(0.5),
) -> Daemon:
    draws = iter(jitter)
    return Daemon(repo, cfg, transport=httpx.MockTransport(upstream), jitter=lambda: next(draws))


def add_batch(
    repo: MemoryRepository,
    prefix: str,
    models: Iterable[str],
    *,
    window: timedelta = timedelta(hours=24),
    owner: str = OWNER,
    body: dict[str, Any] | None = None,
) -> UUID:
    """A batch of ``owner`` created at ``T0``, one request per model, custom ids
    ``prefix0``, ``prefix1``, ...; each body is ``{"model": ..., "i": ..., **body}``."""
    templates = [
        RequestTemplate(f"{prefix}{i}", m, json.dumps({"model": m, "i": i, **(body or {})}))
        for i, m in enumerate(models)
    ]
    stored = repo.create_file(owner, f"{prefix}.jsonl", templates, now=T0)
    spec = BatchSpec(stored.id, "/v1/chat/completions", f"{window.total_seconds():g}s", window)
    return repo.create_batch(owner, spec, now=T0).record.id


def make_batch(repo: MemoryRepository, models: list[str], window: timedelta) -> UUID:
    """A batch of one request per model (custom ids c0, c1, ...), created at ``T0``."""
    return add_batch(repo, "c", models, window=window)


def requests(repo: MemoryRepository, batch: UUID) -> dict[str, RequestSummary]:
    return {r.custom_id: r for r in repo.list_requests(OWNER, batch, limit=100).items}


# ---------------------------------------------------------------------------- tests


async def test_exponential_backoff_between_attempts(
    nursery: trio.Nursery, clock: trio.testing.MockClock
) -> None:
    # base 2 s, factor 3, cap 30 s; jitter draws 0.5, 0.25, 0.75, 0.5: the delays after
    # attempts 1-4 are 0.5*2 = 1, 0.25*6 = 1.5, 0.75*18 = 13.5, 0.5*min(30, 54) = 15.
    policy = RetryPolicy(
        max_attempts=6, base=timedelta(seconds=2), factor=3.0, cap=timedelta(seconds=30)
    )
    repo = MemoryRepository()
    batch = make_batch(repo, ["m"], timedelta(hours=1))
    upstream = ScriptedUpstream({"c0": [Answer(500)] * 4 + [OK]})
    d = daemon(repo, upstream, config(retry=policy), jitter=[0.5, 0.25, 0.75, 0.5])
    await nursery.start(d.run)
    await trio.sleep_until(120.25)
    assert upstream.arrivals["c0"] == [0.0, 1.0, 2.5, 16.0, 31.0]
    c0 = requests(repo, batch)["c0"]
    assert (c0.state, c0.attempts, c0.finished_at) == (RequestState.COMPLETED, 5, at(31))


async def test_retry_after_pauses_the_model_until_it_passes(
    nursery: trio.Nursery, clock: trio.testing.MockClock
) -> None:
    # c0 is refused with retry-after: 20; c1, the same model, waits for its one slot. The
    # model is paused for the 20 s: nothing is sent until then, then c0 again, then c1.
    repo = MemoryRepository()
    batch = make_batch(repo, ["m", "m"], timedelta(hours=1))
    upstream = ScriptedUpstream({"c0": [Answer(429, {"retry-after": "20"}), OK]})
    d = daemon(repo, upstream, config())
    await nursery.start(d.run)
    await trio.sleep_until(19.75)
    assert upstream.times() == [(0.0, "c0")]
    await trio.sleep_until(60.25)
    assert upstream.arrivals["c0"] == [0.0, 20.0]
    # c1 goes as soon as c0's slot is free again (a few milliseconds of claim coalescing)
    (c1,) = upstream.arrivals["c1"]
    assert 20.0 <= c1 < 21.0
    assert {r.state for r in requests(repo, batch).values()} == {RequestState.COMPLETED}


async def test_retry_after_at_the_ceiling_is_honoured_and_past_it_ignored(
    nursery: trio.Nursery, clock: trio.testing.MockClock
) -> None:
    # ceiling 60 s: c0's retry-after of 60 s is honoured; c1's of 61 s is ignored for the
    # backoff, jitter 0.5 * base 4 s = 2 s. Each model is paused for its own delay.
    policy = RetryPolicy(base=timedelta(seconds=4), retry_after_ceiling=timedelta(seconds=60))
    repo = MemoryRepository()
    batch = make_batch(repo, ["m", "n"], timedelta(hours=1))
    upstream = ScriptedUpstream(
        {
            "c0": [Answer(429, {"retry-after": "60"}), OK],
            "c1": [Answer(429, {"retry-after": "61"}), OK],
        }
    )
    d = daemon(repo, upstream, config(retry=policy))
    await nursery.start(d.run)
    await trio.sleep_until(300.25)
    assert upstream.arrivals == {"c0": [0.0, 60.0], "c1": [0.0, 2.0]}
    got = requests(repo, batch)
    assert (got["c0"].state, got["c0"].finished_at) == (RequestState.COMPLETED, at(60))
    assert (got["c1"].state, got["c1"].finished_at) == (RequestState.COMPLETED, at(2))


@pytest.mark.parametrize(("maintenance", "swept_at"), [(5.0, 600.0), (7.0, 602.0)])
async def test_requests_expire_at_the_batch_deadline(
    nursery: trio.Nursery, clock: trio.testing.MockClock, maintenance: float, swept_at: float
) -> None:
    # A 10-minute window. c0 is sent and never answered; c1 and c2 wait for its slot.
    # The cancel watcher (every 0.5 s, which divides 600 s) aborts c0 at exactly T0 +
    # 600 s; the maintenance round sweeps the waiting ones at its first round at or
    # after the deadline: 600 s when it runs every 5 s, 602 s (86 * 7) every 7 s. All
    # end canceled with reason expired, and nothing is sent again.
    repo = MemoryRepository()
    batch = make_batch(repo, ["m", "m", "m"], timedelta(minutes=10))
    upstream = ScriptedUpstream({"c0": [Answer(hold=True)]})
    d = daemon(repo, upstream, config(maintenance_interval=maintenance))
    await nursery.start(d.run)
    await trio.sleep_until(599.75)
    states = {cid: r.state for cid, r in requests(repo, batch).items()}
    assert states == {
        "c0": RequestState.PROCESSING,
        "c1": RequestState.PENDING,
        "c2": RequestState.PENDING,
    }
    await trio.sleep_until(swept_at + 0.25)
    got = {
        cid: (r.state, r.failure_reason, r.finished_at) for cid, r in requests(repo, batch).items()
    }
    assert got == {
        "c0": (RequestState.CANCELED, "expired", at(600)),
        "c1": (RequestState.CANCELED, "expired", at(swept_at)),
        "c2": (RequestState.CANCELED, "expired", at(swept_at)),
    }
    assert repo.get_batch(OWNER, batch, now=at(swept_at + 0.25)).status.value == "expired"
    assert upstream.times() == [(0.0, "c0")]


async def test_a_silent_daemons_request_is_reclaimed_after_stale_after(
    nursery: trio.Nursery, clock: trio.testing.MockClock
) -> None:
    # Daemon A sends c0, which the upstream never answers. While A heartbeats (every
    # 5 s) the request stays A's, however long it runs. A loses the database at 100.5 s:
    # its last heartbeat is at 100 s. B's maintenance (every 5 s from 0) reclaims rows of
    # daemons silent for more than stale_after = 30 s: at 135 s, the first round after
    # 130 s (at 130 s exactly the heartbeat is not yet older than 30 s). B then sends c0
    # again at once, and it succeeds: two attempts used.
    shared = MemoryRepository()
    batch = make_batch(shared, ["m"], timedelta(hours=1))
    upstream = ScriptedUpstream({"c0": [Answer(hold=True), OK]})
    link = Partitionable(shared)
    a = daemon(link, upstream, config())
    b = daemon(shared, upstream, config())
    await nursery.start(a.run)
    await nursery.start(b.run)
    await trio.sleep_until(100.5)
    assert upstream.times() == [(0.0, "c0")]
    assert requests(shared, batch)["c0"].state is RequestState.PROCESSING
    link.cut = True
    await trio.sleep_until(134.75)
    assert upstream.times() == [(0.0, "c0")]
    await trio.sleep_until(135.25)
    assert upstream.arrivals["c0"] == [0.0, 135.0]
    c0 = requests(shared, batch)["c0"]
    assert (c0.state, c0.attempts, c0.finished_at) == (RequestState.COMPLETED, 2, at(135))
    assert b.statistics().recorded == 1


async def test_heartbeats_come_at_their_interval(
    nursery: trio.Nursery, clock: trio.testing.MockClock
) -> None:
    repo = HeartbeatLog()
    d = daemon(repo, ScriptedUpstream(), config(heartbeat_interval=7.0))
    await nursery.start(d.run)
    await trio.sleep_until(60.25)
    assert repo.beats == [at(7 * i) for i in range(9)]  # 0, 7, ..., 56


async def test_a_batch_that_will_miss_its_deadline_is_escalated_and_claimed_ahead(
    nursery: trio.Nursery, clock: trio.testing.MockClock
) -> None:
    # One slot; every answer takes 10 s. Batch A: 500 requests, window 2 h (7,200 s): at
    # its rate of 0.1/s it finishes at 5,000 s, in time, so it is never escalated. Batch
    # B: 20 requests, window 2.5 h (9,000 s), later deadline: earliest deadline first
    # gives B nothing while A runs, so B finishes nothing and is late once less than
    # half its window is left: 9,000 - t < 4,500, first at the maintenance round
    # (every 5 s from 0) at 4,505 s. The claim loop then takes B ahead of A: B's first
    # request goes when A's request in flight answers, within 10 s; B's 20 run one
    # after the other; A's remaining ones run after them and end by about 5,200 s, in
    # time.
    repo = MemoryRepository()

    a = add_batch(repo, "a", ["m"] * 500, window=timedelta(hours=2))
    b = add_batch(repo, "b", ["m"] * 20, window=timedelta(hours=2.5))
    sent: list[tuple[float, str]] = []

    async def slow(request: httpx.Request) -> httpx.Response:
        sent.append((trio.current_time(), request.headers["x-fusillade-custom-id"]))
        await trio.sleep(10)  # the fake upstream's latency (virtual time)
        return httpx.Response(200, content=b'{"ok": true}')

    d = Daemon(repo, config(), transport=httpx.MockTransport(slow), jitter=lambda: 0.5)
    await nursery.start(d.run)
    await trio.sleep_until(4504.75)
    assert repo.get_batch(OWNER, b, now=at(4504.75)).escalated_at is None
    assert not any(cid.startswith("b") for _, cid in sent)
    await trio.sleep_until(4505.25)
    assert repo.get_batch(OWNER, b, now=at(4505.25)).escalated_at == at(4505)
    await trio.sleep_until(5300)
    # B's first request goes when A's request in flight answers (each request also
    # waits the claim loop's few milliseconds of coalescing, so after 450 of them the
    # times have drifted by a second or two)
    order = "".join(cid[0] for _, cid in sent)
    first_b = order.index("b")
    assert 4505 < sent[first_b][0] <= 4505 + 10 + 3
    # B's next ones follow, until B would finish in half its time left at its rate of
    # the last 10 minutes: 16 left at 4 per 600 s need 2,400 s > 4,445 / 2; 15 at 5 per
    # 600 s need 1,800 s < 4,435 / 2, at the round after the fifth answer: cleared.
    assert order[first_b : first_b + 5] == "bbbbb"
    assert order.count("b") == 20
    assert repo.get_batch(OWNER, b, now=at(5300)).escalated_at is None
    for batch_id in (a, b):
        view = repo.get_batch(OWNER, batch_id, now=at(5300))
        assert view.counts.completed == view.counts.total
        assert view.record.expires_at > at(5300)
    assert repo.get_batch(OWNER, a, now=at(5300)).escalated_at is None


async def test_a_busy_daemon_still_looks_at_other_batches_every_poll_interval(
    nursery: trio.Nursery, clock: trio.testing.MockClock
) -> None:
    # A's one request is held by another daemon (claimed before this one starts), so A
    # has nothing pending and this daemon works on B: 100 requests answered in 0.3 s
    # each, one slot, so its wait is cut short by an answer every 0.3 s, never by the
    # poll interval (1 s). At 5 s the other daemon releases A's row, without a NOTIFY
    # (the in-memory store has none). Within a poll interval the daemon looks at the
    # batches again, and A (earliest deadline) gets the next free slot: before 5 + 1 +
    # 0.3 s and a little claim coalescing, not after B's 30 s.
    repo = MemoryRepository()

    a = add_batch(repo, "a", ["m"] * 1, window=timedelta(hours=1))
    add_batch(repo, "b", ["m"] * 100, window=timedelta(hours=2))
    other = UUID(int=7)
    assert [c.custom_id for c in repo.claim(other, [(a, "m", 1)], now=T0)] == ["a0"]
    sent: dict[str, float] = {}

    async def answer(request: httpx.Request) -> httpx.Response:
        sent[request.headers["x-fusillade-custom-id"]] = trio.current_time()
        await trio.sleep(0.3)
        return httpx.Response(200, content=b'{"ok": true}')

    d = Daemon(repo, config(), transport=httpx.MockTransport(answer), jitter=lambda: 0.5)
    await nursery.start(d.run)
    await trio.sleep_until(5.0)
    assert repo.release(other, now=at(5)) == 1
    await trio.sleep_until(8.0)
    assert 5.0 < sent["a0"] < 5.0 + 1.0 + 0.3 + 0.1


async def test_freed_slots_are_claimed_again_while_results_are_still_being_written(
    nursery: trio.Nursery, clock: trio.testing.MockClock
) -> None:
    # Two slots, four requests, an upstream that answers after 2 s, and a writer whose
    # every flush takes 10 s (a slow database). A slot is free as soon as its answer is
    # in: the next two requests go out at 2 s (plus the claim's coalescing), not at 12 s
    # when the first results are committed.
    repo = MemoryRepository()
    add_batch(repo, "c", ["m"] * 4)
    sent: dict[str, float] = {}

    async def answer(request: httpx.Request) -> httpx.Response:
        sent[request.headers["x-fusillade-custom-id"]] = trio.current_time()
        await trio.sleep(2.0)
        return httpx.Response(200, content=b'{"ok": true}')

    d = Daemon(
        repo,
        config(default_concurrency=2),
        transport=httpx.MockTransport(answer),
        jitter=lambda: 0.5,
    )
    record = d.writer._record

    async def slow_record(results: Any) -> Any:
        await trio.sleep(10.0)
        return await record(results)

    d.writer._record = slow_record
    await nursery.start(d.run)
    await trio.sleep_until(3.0)
    assert sorted(sent) == ["c0", "c1", "c2", "c3"]
    assert sent["c0"] == sent["c1"] == 0.0
    assert 2.0 <= sent["c2"] <= 2.1 and 2.0 <= sent["c3"] <= 2.1
