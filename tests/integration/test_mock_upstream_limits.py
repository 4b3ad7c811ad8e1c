"""The mock upstream's OpenAI-style rate limits (``rpm``, ``tpm``, ``max_in_flight``).

Over real loopback HTTP with httpx. The tests that count time run under pytest-trio's
``mock_clock`` (virtual time that stands still until the test jumps it), so every bucket level
and every header below is exact; the expected numbers are worked out by hand in the comments.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import AsyncIterator

import httpx
import pytest
import trio
from trio.testing import MockClock
from upstream import mock_upstream_fixture  # noqa: F401 (registers the ``mock_upstream`` fixture)

from fusillade.mock_upstream import Behaviour, MockUpstream
from fusillade.mock_upstream._cli import add_arguments

CHAT = "/v1/chat/completions"
WAIT = 10.0
GO_DURATION = re.compile(r"^(\d+h)?(\d+m)?(\d+(\.\d+)?s|\d+ms)$")
JSON = {"content-type": "application/json"}


def body(max_tokens: str = "40", model: str = "m") -> bytes:
    """A chat request of 76 bytes (19 tokens at 4 bytes a token) for a one-letter model and a
    two-digit max_tokens."""
    return (
        b'{"model":"' + model.encode() + b'","messages":[{"role":"user","content":"hello"}],'
        b'"max_tokens":' + max_tokens.encode() + b"}"
    )


@pytest.fixture
async def client(mock_upstream: MockUpstream) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=mock_upstream.url, timeout=WAIT) as c:
        yield c


async def chat(client: httpx.AsyncClient, model: str = "m", **headers: str) -> httpx.Response:
    """A chat request of 57 bytes (15 tokens) for a one-letter model, without max_tokens."""
    content = b'{"model":"' + model.encode() + b'","messages":[{"role":"user","content":"hi"}]}'
    return await client.post(CHAT, content=content, headers={**JSON, **headers})


def quota(response: httpx.Response, unit: str) -> tuple[str, str, str]:
    """(limit, remaining, reset) of the response's ``x-ratelimit-*-<unit>`` headers."""
    h = response.headers
    names = (f"x-ratelimit-limit-{unit}", f"x-ratelimit-remaining-{unit}")
    return h[names[0]], h[names[1]], h[f"x-ratelimit-reset-{unit}"]


def assert_refused(response: httpx.Response, kind: str, retry_after: str, ms: str) -> None:
    assert response.status_code == 429
    error = response.json()["error"]
    assert error["type"] == kind
    assert error["code"] == "rate_limit_exceeded"
    assert error["param"] is None
    assert response.headers["retry-after"] == retry_after
    assert response.headers["retry-after-ms"] == ms


async def test_rpm_short_window_refuses_a_burst_then_admits(
    mock_clock: MockClock, mock_upstream: MockUpstream, client: httpx.AsyncClient
) -> None:
    # rpm 120 refills 2 a second; over the 1 s window at most ceil(120 / 60 * 1) = 2.
    mock_upstream.config.default = Behaviour(rpm=120)
    first, second, third = [await chat(client) for _ in range(3)]
    assert first.status_code == second.status_code == 200
    # 119 left; one request short of full refills in 1 / 2 s.
    assert quota(first, "requests") == ("120", "119", "500ms")
    assert quota(second, "requests") == ("120", "118", "1s")
    assert "x-ratelimit-limit-tokens" not in first.headers
    # The bucket has 118 but the window is full until both requests are 1 s old.
    assert_refused(third, "requests", "1", "1000")
    assert third.json()["error"]["message"].startswith("Rate limit reached for requests")
    assert quota(third, "requests") == ("120", "118", "1s")  # the refusal took nothing

    mock_clock.jump(0.5)  # the bucket is back at 119; the window still holds both
    assert_refused(await chat(client), "requests", "1", "500")
    mock_clock.jump(0.5)
    again = await chat(client)
    assert again.status_code == 200
    assert quota(again, "requests") == ("120", "119", "500ms")

    assert mock_upstream.stats.rate_limited == {"rpm": 2}
    assert mock_upstream.stats.by_status == {200: 3, 429: 2}
    assert (await client.get("/_stats")).json()["rate_limited"] == {"rpm": 2}
    mock_upstream.reset()
    assert mock_upstream.stats.rate_limited == {}
    # Reset fills the buckets again: 120 less this request.
    assert quota(await chat(client), "requests") == ("120", "119", "500ms")


async def test_rpm_bucket_refills_at_the_per_minute_rate(
    mock_clock: MockClock, mock_upstream: MockUpstream, client: httpx.AsyncClient
) -> None:
    # rpm 3 without the short window: 3 at once, then one every 20 s.
    mock_upstream.config.default = Behaviour(rpm=3, rate_window=0)
    answers = [await chat(client) for _ in range(4)]
    assert [a.status_code for a in answers[:3]] == [200, 200, 200]
    assert [quota(a, "requests") for a in answers[:3]] == [
        ("3", "2", "20s"),
        ("3", "1", "40s"),
        ("3", "0", "1m0s"),
    ]
    assert_refused(answers[3], "requests", "20", "20000")
    assert quota(answers[3], "requests") == ("3", "0", "1m0s")

    mock_clock.jump(19.5)
    assert_refused(await chat(client), "requests", "1", "500")
    mock_clock.jump(0.5)
    admitted = await chat(client)
    assert admitted.status_code == 200
    assert quota(admitted, "requests") == ("3", "0", "1m0s")


async def test_tpm_counts_the_body_and_max_tokens(
    mock_clock: MockClock, mock_upstream: MockUpstream, client: httpx.AsyncClient
) -> None:
    # tpm 6000 refills 100 a second; the 1 s window holds ceil(6000 / 60) = 100 tokens.
    mock_upstream.config.default = Behaviour(tpm=6000)
    assert len(body("40")) == 76

    first = await client.post(CHAT, content=body("40"), headers=JSON)  # 19 + 40 = 59
    assert first.status_code == 200
    assert quota(first, "tokens") == ("6000", "5941", "590ms")  # 59 tokens at 100 a second
    assert "x-ratelimit-limit-requests" not in first.headers

    second = await client.post(CHAT, content=body("40"), headers=JSON)  # 59 + 59 > 100
    assert_refused(second, "tokens", "1", "1000")
    assert second.json()["error"]["message"].startswith("Rate limit reached for tokens")
    assert quota(second, "tokens") == ("6000", "5941", "590ms")

    third = await client.post(CHAT, content=body("21"), headers=JSON)  # 59 + 40 = 99: fits
    assert third.status_code == 200
    assert quota(third, "tokens") == ("6000", "5901", "990ms")

    # Without max_tokens a request counts 16 for its output.
    mock_clock.jump(1)  # the window is empty; the bucket full again (5901 + 100 > 6000)
    plain = await client.post(CHAT, content=b'{"model":"m","messages":[]}', headers=JSON)
    assert plain.status_code == 400  # admitted (27 bytes: 7 tokens, + 16), then invalid
    assert quota(plain, "tokens") == ("6000", "5977", "230ms")

    # Bigger than the window's 100 but alone in an empty window: admitted.
    mock_clock.jump(1)
    big = await client.post(CHAT, content=body("500"), headers=JSON)
    assert len(body("500")) == 77  # 20 tokens + 500
    assert big.status_code == 200
    assert quota(big, "tokens") == ("6000", "5480", "5.2s")
    mock_clock.jump(0.25)  # another must wait until the first has left the window: 0.75 s
    assert_refused(await client.post(CHAT, content=body("500"), headers=JSON), "tokens", "1", "750")

    # More than the whole bucket: never fits, so no retry-after.
    mock_clock.jump(60)
    huge = await client.post(CHAT, content=body("9999"), headers=JSON)
    assert huge.status_code == 429
    assert huge.json()["error"]["message"].startswith("Request too large for tokens")
    assert "retry-after" not in huge.headers
    assert mock_upstream.stats.rate_limited == {"tpm": 3}


async def test_max_in_flight_refuses_while_requests_are_held(
    mock_upstream: MockUpstream, client: httpx.AsyncClient
) -> None:
    mock_upstream.config.default = Behaviour(max_in_flight=2, hold=True)
    statuses: list[int] = []

    async def send() -> None:
        statuses.append((await chat(client)).status_code)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        nursery.start_soon(send)
        with trio.fail_after(WAIT):
            await mock_upstream.wait_until(lambda s: s.in_flight_total == 2)
        refused = await chat(client)
        assert_refused(refused, "requests", "1", "1000")
        assert "x-ratelimit-limit-requests" not in refused.headers  # no rpm set
        assert statuses == []
        mock_upstream.release_held()
    assert statuses == [200, 200]
    assert (await chat(client, **{"x-mock-hold": "false"})).status_code == 200
    assert mock_upstream.stats.rate_limited == {"max_in_flight": 1}
    assert mock_upstream.stats.peak_in_flight_total == 3  # the refused one counted briefly


async def test_limits_count_per_model_for_a_per_model_behaviour(
    mock_clock: MockClock, mock_upstream: MockUpstream, client: httpx.AsyncClient
) -> None:
    # rpm 60: one request per 1 s window. "a" has its own budget; "b" and "c" share the default's.
    mock_upstream.config.default = Behaviour(rpm=60)
    mock_upstream.config.per_model["a"] = Behaviour(rpm=60)
    statuses = [(await chat(client, model)).status_code for model in ("a", "a", "b", "c", "a")]
    assert statuses == [200, 429, 200, 429, 429]
    assert mock_upstream.stats.rate_limited == {"rpm": 3}


async def test_config_route_and_mock_headers_set_the_limits(
    mock_clock: MockClock, mock_upstream: MockUpstream, client: httpx.AsyncClient
) -> None:
    configured = await client.post("/_config", json={"default": {"tpm": 1000, "rate_window": 60}})
    assert configured.status_code == 200
    default = configured.json()["default"]
    assert (default["rpm"], default["tpm"], default["max_in_flight"]) == (None, 1000, None)
    assert default["rate_window"] == 60.0
    assert mock_upstream.config.default == Behaviour(tpm=1000, rate_window=60)

    plain = await chat(client)  # 15 tokens + 16 for the output
    assert plain.status_code == 200
    assert quota(plain, "tokens") == ("1000", "969", "1.86s")  # 31 tokens at 1000 / 60 a second
    assert "x-ratelimit-limit-requests" not in plain.headers

    # x-mock-rpm: 1 adds a one-request bucket (the window allows ceil(1 / 60 * 60) = 1).
    limited = await chat(client, **{"x-mock-rpm": "1"})
    assert limited.status_code == 200
    assert quota(limited, "requests") == ("1", "0", "1m0s")
    assert quota(limited, "tokens") == ("1000", "938", "3.72s")
    refused = await chat(client, **{"x-mock-rpm": "1"})
    assert_refused(refused, "requests", "60", "60000")
    assert quota(refused, "tokens") == ("1000", "938", "3.72s")  # nothing taken

    bad = await client.post("/_config", json={"default": {"rpm": 0}})
    assert bad.status_code == 400
    assert "rpm must be >= 1" in bad.json()["error"]["message"]
    assert (await chat(client, **{"x-mock-max-in-flight": "x"})).status_code == 400


async def test_headers_are_well_formed_on_every_answer(
    mock_upstream: MockUpstream, client: httpx.AsyncClient
) -> None:
    # Real time: only the shapes are checked.
    mock_upstream.config.default = Behaviour(rpm=10_000, tpm=1_000_000, latency=0.01)
    for _ in range(5):
        response = await chat(client)
        assert response.status_code == 200
        for unit, limit in (("requests", "10000"), ("tokens", "1000000")):
            got_limit, remaining, reset = quota(response, unit)
            assert got_limit == limit
            assert remaining.isdigit()
            assert int(remaining) < int(limit)
            assert GO_DURATION.match(reset), reset


def test_flags() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--rpm", "60", "--tpm", "1000", "--max-in-flight", "4"])
    args2 = parser.parse_args(["--rate-window", "2.5"])
    assert (args.rpm, args.tpm, args.max_in_flight) == (60, 1000, 4)
    assert args2.rate_window == 2.5
