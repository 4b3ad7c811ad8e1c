"""Answers of a wave are processed first come, first served (runtime/fair_reads.py): the
first to arrive finish while the rest of the wave waits, so their slots refill at once."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import httpcore
import trio
from upstream import mock_upstream_fixture  # noqa: F401 (registers ``mock_upstream``)

from fusillade.core.attempts import ClaimedRequest
from fusillade.core.retry import HttpResponse
from fusillade.mock_upstream import MockUpstream
from fusillade.runtime.config import DaemonConfig, Upstream
from fusillade.runtime.dispatch import Dispatcher
from fusillade.runtime.fair_reads import FairStream, Turns

STEPS = 10  # the yields of parsing one answer (httpcore's are about a dozen)


async def test_a_wave_of_answers_finishes_in_arrival_order_a_few_at_a_time() -> None:
    """Forty answers arrive at once. Without turns every task takes one step per round of
    the scheduler and all finish in the last rounds; with two turns, at most two are
    parsed at once and the first finishes before most of the wave has begun."""
    turns = Turns(2)
    parsing = 0
    most = 0
    began: list[int] = []
    finished: list[int] = []

    async def answer(i: int) -> None:
        nonlocal parsing, most
        stream = FairStream(httpcore.AsyncMockStream([b"HTTP/1.1 200 OK\r\n\r\n"]), turns)
        await stream.read(65536)
        began.append(i)
        parsing += 1
        most = max(most, parsing)
        for _ in range(STEPS):
            await trio.lowlevel.checkpoint()
        parsing -= 1
        finished.append(i)
        turns.end()

    async with trio.open_nursery() as nursery:
        for i in range(40):
            nursery.start_soon(answer, i)
    assert most == 2
    assert len(finished) == 40
    # the first answer was done when no more than three others had begun
    assert began.index(finished[0]) < 2
    assert began.index(finished[1]) < 4 or began[:4].count(finished[1]) == 1


def _request(i: int) -> ClaimedRequest:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    return ClaimedRequest(
        id=uuid.uuid4(),
        batch_id=uuid.uuid4(),
        attempt=1,
        budget_used=1,
        model="m",
        batch_expires_at=datetime(2100, 1, 1, tzinfo=UTC),
        custom_id=f"c{i}",
        endpoint="",
        method="POST",
        path="/v1/chat/completions",
        body='{"model":"m","messages":[{"role":"user","content":"hi"}]}',
        daemon_id=uuid.uuid4(),
        claimed_at=at,
        started_at=at,
        not_before=at,
    )


async def test_every_turn_is_given_back_once_answers_are_read(
    mock_upstream: MockUpstream,
) -> None:
    """Many requests at once over real loopback connections: all answered, and afterwards
    every turn is free again (a turn kept would slowly stop the daemon)."""
    config = DaemonConfig(
        upstreams={"up": Upstream(mock_upstream.url, slow_start=False)}, default_upstream="up"
    )
    async with Dispatcher(config) as dispatcher:
        outcomes: list[object] = []

        async def one(i: int) -> None:
            outcomes.append((await dispatcher.send(_request(i))).outcome)

        with trio.fail_after(20):  # turns kept would leave the last requests waiting
            async with trio.open_nursery() as nursery:
                for i in range(100):
                    nursery.start_soon(one, i)
        assert len(outcomes) == 100
        assert all(isinstance(o, HttpResponse) and o.status == 200 for o in outcomes)
        assert dispatcher.turns.free == dispatcher.turns.total


class _Recording(httpcore.AsyncNetworkStream):
    """A stream that keeps what is written to it and answers every read with ``answer``;
    with ``broken``, every write fails as a connection closed by the peer would."""

    def __init__(self, answer: bytes, *, broken: bool = False) -> None:
        self.writes: list[bytes] = []
        self.answer = answer
        self.broken = broken

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self.answer

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if self.broken:
            raise httpcore.WriteError("connection reset by peer")
        self.writes.append(buffer)


async def test_a_request_goes_out_in_one_write_at_the_first_read() -> None:
    inner = _Recording(b"HTTP/1.1 200 OK\r\n")
    stream = FairStream(inner, Turns(1))
    await stream.write(b"POST / HTTP/1.1\r\n\r\n")
    await stream.write(b'{"a":1}')
    await stream.write(b"")
    assert inner.writes == []
    assert await stream.read(65536) == b"HTTP/1.1 200 OK\r\n"
    assert inner.writes == [b'POST / HTTP/1.1\r\n\r\n{"a":1}']


async def test_an_answer_sent_before_the_upstream_closed_is_still_read() -> None:
    """As httpcore: a write error while sending the request is not the outcome when the
    upstream answered first (a 413 for a body too large, say)."""
    stream = FairStream(_Recording(b"HTTP/1.1 413 Too Large\r\n", broken=True), Turns(1))
    await stream.write(b"POST / HTTP/1.1\r\n\r\n")
    assert await stream.read(65536) == b"HTTP/1.1 413 Too Large\r\n"
