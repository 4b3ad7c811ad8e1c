"""API fuzzing: schemathesis against the live server's ``/openapi.json``.

Every operation gets a bounded number of generated requests, valid and invalid; each
answer must not be a 5xx and must match the schema (status code, content type, body).
The test is synchronous: the server (with a daemon and the mock upstream) runs in a
background thread with its own ``trio.run``, because schemathesis calls it with a
blocking client.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import hypothesis
import pytest
import schemathesis
from helpers import server_in_thread
from hypothesis import HealthCheck, given
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance
from serverkit import UPSTREAM_KEY, UPSTREAM_KEY_ENV, chat_line, jsonl

API_KEY = "sk-schemathesis-0000"
# Operations whose schema-valid input may still be a 400 by design, so the check that
# "schema-valid data is accepted" does not apply: the uploaded file's lines are validated
# (api.md), the batch's endpoint and window are checked against the server's allow-lists.
# So is a well-formed but unknown `after` cursor ("a 400, not a silent restart").
CHECKED_BEYOND_SCHEMA = {"POST /v1/files", "POST /v1/batches"}
MAX_EXAMPLES = 25


@pytest.fixture
def live_url(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv(UPSTREAM_KEY_ENV, UPSTREAM_KEY)
    monkeypatch.setenv("FUSILLADE_TEST_KEY_FUZZ", API_KEY)
    with server_in_thread(
        database_url, "FUSILLADE_TEST_KEY_FUZZ", upstream_key_env=UPSTREAM_KEY_ENV
    ) as url:
        yield url


# schemathesis's own strategies draw from the `random` module, which Hypothesis warns
# about (an error here: filterwarnings=error); the warning is about its code, not ours.
_SCHEMATHESIS_RANDOM = pytest.mark.filterwarnings(
    "ignore:Do not use the `random` module inside strategies"
    ":hypothesis.errors.HypothesisDeprecationWarning"
)


@_SCHEMATHESIS_RANDOM
def test_openapi_conformance(live_url: str) -> None:
    import httpx

    headers = {"Authorization": f"Bearer {API_KEY}"}
    # Some real objects, so generated ids sometimes hit (most are simply unknown: 404).
    with httpx.Client(base_url=live_url, headers=headers) as c:
        content = jsonl([chat_line("a"), chat_line("b")])
        up = c.post("/v1/files", files={"file": ("a.jsonl", content)}, data={"purpose": "batch"})
        assert up.status_code == 200, up.text
        body = {"input_file_id": up.json()["id"], "endpoint": "/v1/chat/completions"}
        made = c.post("/v1/batches", json={**body, "completion_window": "24h"})
        assert made.status_code == 200, made.text

    schema = schemathesis.openapi.from_url(f"{live_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 14
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy = operation.as_strategy(generation_mode=mode)

            @given(case=strategy)
            @hypothesis.settings(
                max_examples=MAX_EXAMPLES,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
                derandomize=True,
            )
            def check(case: Any) -> None:
                excluded = []
                if case.operation.label in CHECKED_BEYOND_SCHEMA or (
                    case.query and "after" in case.query
                ):
                    excluded.append(positive_data_acceptance)
                # The real key replaces the generated one, unless the case left the
                # header out on purpose (a negative case: then 401 is the answer).
                keyed = case.headers is not None and "Authorization" in case.headers
                case.call_and_validate(
                    base_url=live_url, headers=headers if keyed else None, excluded_checks=excluded
                )

            try:
                check()
            except hypothesis.errors.Unsatisfiable:
                # an operation without inputs (GET /healthz) has no invalid requests
                assert mode is GenerationMode.NEGATIVE


def test_every_documented_error_is_the_envelope() -> None:
    from fusillade.config import ServerSettings
    from fusillade.engine import Engine
    from fusillade.server.app import create_app
    from fusillade.server.auth import KeyRing
    from fusillade.server.context import ServerContext
    from fusillade.store.memory import MemoryRepository

    ctx = ServerContext(
        engine=Engine(MemoryRepository()), settings=ServerSettings(), keys=KeyRing(())
    )
    document = create_app(ctx).openapi_schema.to_schema()
    for path, item in document["paths"].items():
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                if int(status) >= 400 and path.startswith("/v1"):
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/ErrorResponse"}, (
                        method,
                        path,
                        status,
                    )
            if path.startswith("/v1"):
                assert operation["security"] == [{"BearerAuth": []}]
                assert {"400", "401", "503"} <= set(operation["responses"])
