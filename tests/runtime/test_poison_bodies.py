"""Upstream bodies that PostgreSQL text cannot hold (issue 11, item 2).

Every body, whatever its bytes, ends as one recorded result for its own request, and
never holds up the results of other requests: through the real dispatcher (HTTP over
loopback), the result writer and PostgreSQL. Downloads give the exact bytes back
(docs/semantics.md, "Response bodies").
"""

from __future__ import annotations

import base64
import json
from datetime import timedelta
from typing import Any
from uuid import UUID

import pytest
import trio
from helpers import OWNER, daemon_config, make_batch, result_lines, wait_status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scripted_upstream import ScriptedUpstream, serve_scripted_upstream

from fusillade.core.models import BatchStatus, BatchView, RequestState
from fusillade.core.results import ResultLine, format_result_line
from fusillade.core.retry import RetryPolicy
from fusillade.core.strictjson import BadJSON, loads_strict
from fusillade.runtime.daemon import Daemon
from fusillade.store.interface import Repository
from fusillade.store.postgres import PostgresRepository

POLICY = RetryPolicy(
    max_attempts=2, base=timedelta(milliseconds=10), cap=timedelta(milliseconds=20)
)


async def run_batch(
    repo: Repository, nursery: trio.Nursery, answers: dict[str, tuple[int, bytes]], n: int
) -> tuple[UUID, BatchView, Daemon, ScriptedUpstream]:
    """A batch of ``n`` requests (custom ids c0..), answered as ``answers`` says, run to
    its end by one daemon."""
    upstream: ScriptedUpstream = await nursery.start(serve_scripted_upstream, answers)
    batch = await make_batch(repo, n)
    daemon = Daemon(repo, daemon_config(upstream, retry=POLICY))  # type: ignore[arg-type]
    await nursery.start(daemon.run)
    view = await wait_status(repo, batch, timeout=60)
    return batch, view, daemon, upstream


async def lines_by_custom_id(repo: Repository, batch: UUID) -> dict[str, dict[str, Any]]:
    """Every output and error line of ``batch``, parsed, by custom id (each at most once)."""
    found: dict[str, dict[str, Any]] = {}
    for errors in (False, True):
        line: ResultLine
        for line in await result_lines(repo, batch, errors=errors):
            parsed = json.loads(format_result_line(line))
            assert parsed["custom_id"] not in found
            found[parsed["custom_id"]] = parsed
    return found


def given_back(response: dict[str, Any]) -> bytes | Any:
    """What a result line gives back of a body: its bytes from ``body_base64`` when they
    are not UTF-8, else ``body`` (a JSON body's value, or the exact text)."""
    if "body_base64" in response:
        return base64.b64decode(response["body_base64"])
    return response["body"]


def expected(body: bytes) -> bytes | Any:
    """What a line must give back of ``body`` (as ``given_back`` reads it)."""
    try:
        text = body.decode()
    except UnicodeDecodeError:
        return body
    try:
        return loads_strict(text, 256)
    except BadJSON:
        return text


async def response_content(repo: Repository, batch: UUID, custom_id: str) -> bytes | None:
    def read() -> bytes | None:
        page = repo.list_requests(OWNER, batch, limit=1000)
        (summary,) = [s for s in page.items if s.custom_id == custom_id]
        return repo.get_request(OWNER, summary.id).response_content

    return await trio.to_thread.run_sync(read)


POISON = b'{"error":{"message":"bad input \x00 here"}}'


async def test_an_error_body_with_a_nul_byte_is_recorded_and_blocks_no_other_result(
    repo: PostgresRepository, nursery: trio.Nursery
) -> None:
    # The report: a 400 whose body holds a raw NUL made the writer retry its chunk forever.
    with trio.fail_after(60):
        batch, view, daemon, _ = await run_batch(repo, nursery, {"c3": (400, POISON)}, 8)
    assert view.status is BatchStatus.COMPLETED
    assert (view.counts.completed, view.counts.failed) == (7, 1)
    lines = await lines_by_custom_id(repo, batch)
    poisoned = lines["c3"]
    assert poisoned["response"]["status_code"] == 400
    assert given_back(poisoned["response"]) == POISON.decode()  # exact: JSON writes \u0000
    assert "body_base64" not in poisoned["response"]
    assert await response_content(repo, batch, "c3") == POISON
    assert daemon.healthy and daemon.writer.failures_in_a_row == 0
    daemon.stop()


CASES = {
    "nul in a 400": (400, POISON),
    "invalid utf-8 in a 400": (400, b'{"error":"caf\xe9 \xff\xfe"}'),
    "binary 500": (500, bytes(range(256)) * 4),
    "empty 400": (400, b""),
    "lone surrogate as raw bytes in a 422": (422, b'{"m":"\xed\xa0\x80"}'),
    "escaped nul in a 200": (200, b'{"choices":[{"text":"a\\u0000b"}],"usage":{}}'),
    "escaped lone surrogate in a 200": (200, b'{"text":"\\ud800 and \\udfff"}'),
    "escaped nul in a 400": (400, b'{"error":{"message":"x\\u0000y"}}'),
    "invalid utf-8 inside the json of a 200": (200, b'{"text":"caf\xe9"}'),
}


@pytest.mark.parametrize("case", CASES)
async def test_any_upstream_body_is_given_back_byte_for_byte_or_as_its_json_value(
    repo: PostgresRepository, nursery: trio.Nursery, case: str
) -> None:
    status, body = CASES[case]
    with trio.fail_after(60):
        batch, view, daemon, _ = await run_batch(repo, nursery, {"c1": (status, body)}, 3)
    assert view.counts.completed + view.counts.failed == 3
    line = (await lines_by_custom_id(repo, batch))["c1"]
    assert line["response"]["status_code"] == status
    assert given_back(line["response"]) == expected(body)
    if status != 200 or b"\xe9" in body:
        # (A strict-JSON success is stored compact, 0003: its JSON value is what is kept.)
        assert await response_content(repo, batch, "c1") == body
    assert daemon.healthy
    daemon.stop()


async def test_a_body_of_tens_of_megabytes_is_recorded(
    repo: PostgresRepository, nursery: trio.Nursery
) -> None:
    big_error = json.dumps({"error": {"message": "x" * (24 << 20)}}).encode()
    big_binary = b"\x00\xff" * (8 << 20)
    answers = {"c0": (400, big_error), "c1": (400, big_binary)}
    with trio.fail_after(120):
        batch, view, daemon, _ = await run_batch(repo, nursery, answers, 4)
    assert (view.counts.completed, view.counts.failed) == (2, 2)
    assert await response_content(repo, batch, "c0") == big_error
    assert await response_content(repo, batch, "c1") == big_binary
    states = {s.custom_id: s.state for s in (await _summaries(repo, batch))}
    assert states == {
        "c0": RequestState.FAILED,
        "c1": RequestState.FAILED,
        "c2": RequestState.COMPLETED,
        "c3": RequestState.COMPLETED,
    }
    daemon.stop()


async def _summaries(repo: Repository, batch: UUID) -> list[Any]:
    return list(
        (await trio.to_thread.run_sync(lambda: repo.list_requests(OWNER, batch, limit=100))).items
    )


# ----------------------------------------------------------- property: any bytes at all

_TEXT = st.text(
    st.one_of(st.characters(), st.just("\x00"), st.integers(0xD800, 0xDFFF).map(chr)),
    max_size=20,
)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | _TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=8,
)


@st.composite
def _json_bytes(draw: st.DrawFn) -> bytes:
    """JSON with arbitrary text: escaped (``\\u0000``, ``\\ud800``) or raw, where a raw lone
    surrogate becomes the invalid UTF-8 that some encoders write for it."""
    text = json.dumps(draw(_JSON), ensure_ascii=draw(st.booleans()))
    return text.encode("utf-8", "surrogatepass")


BODIES = st.one_of(st.binary(max_size=64), _json_bytes(), st.sampled_from([b"", POISON]))
ANSWERS = st.lists(st.tuples(st.sampled_from([200, 400, 422, 500]), BODIES), min_size=1, max_size=6)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(answers=ANSWERS)
def test_every_request_gets_exactly_one_result_whatever_the_upstream_bodies(
    database_url: str, answers: list[tuple[int, bytes]]
) -> None:
    scripted = {f"c{i}": answer for i, answer in enumerate(answers)}

    async def scenario(repo: PostgresRepository) -> None:
        async with trio.open_nursery() as nursery:
            with trio.fail_after(60):
                batch, view, daemon, _ = await run_batch(repo, nursery, scripted, len(answers))
            assert view.counts.completed + view.counts.failed == len(answers)
            assert view.counts.canceled == 0
            lines = await lines_by_custom_id(repo, batch)
            assert set(lines) == set(scripted)
            for custom_id, (status, body) in scripted.items():
                line = lines[custom_id]
                if line["response"] is None:  # only a 2xx that is not JSON, retried in vain
                    assert status == 200 and line["error"]["code"] == "connection_error"
                    continue
                assert line["response"]["status_code"] == status
                assert given_back(line["response"]) == expected(body)
            assert daemon.healthy and daemon.writer.unstorable == 0
            daemon.stop()
            nursery.cancel_scope.cancel()

    repo = PostgresRepository(database_url, max_size=10)
    repo.open()
    try:
        trio.run(scenario, repo)
    finally:
        repo.close()
