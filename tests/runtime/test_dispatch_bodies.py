"""What the dispatcher makes of a 2xx body (stored compact when it is strict JSON), and of
no answer at all (a message naming the upstream)."""

from __future__ import annotations

import json
import socket
import uuid
from datetime import UTC, datetime

import httpx
import pytest

from fusillade.core.attempts import ClaimedRequest
from fusillade.core.retry import HttpResponse, TransportError, TransportErrorKind
from fusillade.runtime.config import DaemonConfig, Upstream
from fusillade.runtime.dispatch import Dispatcher

PRETTY = '{\n  "id": "chatcmpl-1",\n  "usage": {"prompt_tokens": 3, "completion_tokens": 4}\n}'


def _request() -> ClaimedRequest:
    return ClaimedRequest(
        id=uuid.uuid4(),
        batch_id=uuid.uuid4(),
        attempt=1,
        budget_used=1,
        model="m",
        batch_expires_at=datetime(2100, 1, 1, tzinfo=UTC),
        custom_id="c",
        endpoint="",
        method="POST",
        path="/v1/chat/completions",
        body='{"model":"m"}',
        daemon_id=uuid.uuid4(),
        claimed_at=datetime(2026, 1, 1, tzinfo=UTC),
        started_at=datetime(2026, 1, 1, tzinfo=UTC),
        not_before=datetime(2026, 1, 1, tzinfo=UTC),
    )


async def _send(body: str) -> tuple[object, str | None, int | None]:
    transport = httpx.MockTransport(lambda request: httpx.Response(200, text=body))
    config = DaemonConfig(
        upstreams={"up": Upstream("http://upstream.invalid")}, default_upstream="up"
    )
    async with Dispatcher(config, transport=transport) as dispatcher:
        sent = await dispatcher.send(_request())
    return sent.outcome, sent.json_body, sent.input_tokens


async def test_strict_json_body_is_kept_compact_for_splicing() -> None:
    outcome, json_body, tokens = await _send(PRETTY)
    assert isinstance(outcome, HttpResponse)
    assert outcome.body == PRETTY  # what the upstream said, for the retry rules
    assert json_body == '{"id":"chatcmpl-1","usage":{"prompt_tokens":3,"completion_tokens":4}}'
    assert tokens == 3


@pytest.mark.parametrize("body", ['{"a":1,"a":2}', '{"x":NaN}'])
async def test_lax_json_body_is_a_result_but_not_spliced(body: str) -> None:
    outcome, json_body, _ = await _send(body)
    assert isinstance(outcome, HttpResponse)
    assert json_body is None
    json.loads(body)  # the premise: lax JSON, which the standard parser accepts


async def test_non_json_body_is_a_protocol_error() -> None:
    outcome, json_body, _ = await _send("<html>bad gateway</html>")
    assert isinstance(outcome, TransportError)
    assert json_body is None


async def test_a_refused_connection_names_the_upstream_host_and_port_not_its_credentials() -> None:
    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://user:s3cret@127.0.0.1:{port}"
    config = DaemonConfig(upstreams={"up": Upstream(base)}, default_upstream="up")
    async with Dispatcher(config) as dispatcher:
        sent = await dispatcher.send(_request())
    assert isinstance(sent.outcome, TransportError)
    assert sent.outcome.kind is TransportErrorKind.CONNECT
    assert sent.outcome.message == f"connect: ConnectError (upstream 127.0.0.1:{port})"
