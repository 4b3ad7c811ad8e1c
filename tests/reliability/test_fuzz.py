"""API fuzzing with many more examples than CI: schemathesis against the live server.

CI runs tests/server/test_schemathesis.py (25 examples per operation and mode). This is
the long run, skipped unless asked for:

    FUSILLADE_FUZZ_EXAMPLES=500 pytest tests/reliability/test_fuzz.py -s

(``FUSILLADE_FUZZ_SEED`` picks other examples; without it they are derandomized, the
same on every run). Every operation of ``/openapi.json`` gets that many generated
requests in each mode, schema-valid (positive) and schema-invalid (negative); every
answer must not be a 5xx and must match the schema (status code, content type, body).
Unlike the CI test it does not stop at the first operation that fails: it reports every
failing operation, and prints the number of requests sent. The latest result is recorded
in docs/reliability.md.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from typing import Any

import hypothesis
import pytest
import schemathesis
from helpers import server_in_thread
from hypothesis import HealthCheck, given
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

EXAMPLES = int(os.environ.get("FUSILLADE_FUZZ_EXAMPLES", "0"))
SEED = os.environ.get("FUSILLADE_FUZZ_SEED")
API_KEY = "sk-fuzz-reliability-0000"
KEY_ENV = "FUSILLADE_TEST_KEY_FUZZ_LONG"
# As in tests/server/test_schemathesis.py: schema-valid input may still be a 400 here by
# design (file lines and the batch's endpoint/window are validated beyond the schema).
CHECKED_BEYOND_SCHEMA = {"POST /v1/files", "POST /v1/batches"}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        EXAMPLES <= 0,
        reason="the long fuzzing run: "
        "FUSILLADE_FUZZ_EXAMPLES=500 pytest tests/reliability/test_fuzz.py",
    ),
]


@pytest.fixture
def live_url(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv(KEY_ENV, API_KEY)
    with server_in_thread(database_url, KEY_ENV) as url:
        yield url


# schemathesis's own strategies draw from the `random` module, which Hypothesis warns
# about (an error here: filterwarnings=error); the warning is about its code, not ours.
_SCHEMATHESIS_RANDOM = pytest.mark.filterwarnings(
    "ignore:Do not use the `random` module inside strategies"
    ":hypothesis.errors.HypothesisDeprecationWarning"
)


@_SCHEMATHESIS_RANDOM
def test_fuzz_the_live_api(live_url: str) -> None:
    import httpx

    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=live_url, headers=headers) as c:
        line = (
            b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",'
            b' "body": {"model": "m", "messages": []}}\n'
        )
        up = c.post("/v1/files", files={"file": ("a.jsonl", line)}, data={"purpose": "batch"})
        assert up.status_code == 200, up.text
        body = {"input_file_id": up.json()["id"], "endpoint": "/v1/chat/completions"}
        made = c.post("/v1/batches", json={**body, "completion_window": "24h"})
        assert made.status_code == 200, made.text

    schema = schemathesis.openapi.from_url(f"{live_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    sent: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    failures: list[str] = []
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy = operation.as_strategy(generation_mode=mode)

            @given(case=strategy)
            @hypothesis.settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
                derandomize=SEED is None,
                print_blob=True,
            )
            def check(case: Any) -> None:
                excluded = []
                if case.operation.label in CHECKED_BEYOND_SCHEMA or (
                    case.query and "after" in case.query
                ):
                    excluded.append(positive_data_acceptance)
                keyed = case.headers is not None and "Authorization" in case.headers
                response = case.call(base_url=live_url, headers=headers if keyed else None)
                sent[case.operation.label] += 1
                statuses[response.status_code] += 1
                case.validate_response(response, excluded_checks=excluded)

            if SEED is not None:
                check = hypothesis.seed(int(SEED))(check)
            try:
                check()
            except hypothesis.errors.Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE  # an operation without inputs
            except Exception as exc:
                failures.append(f"{operation.label} ({mode.value}): {str(exc)[:2000]}")
    total = sum(sent.values())
    print(
        f"\nfuzz: {len(operations)} operations, {EXAMPLES} examples per operation and mode, "
        f"{total} requests sent, {len(failures)} failing operations; statuses "
        f"{dict(sorted(statuses.items()))}"
    )
    assert not failures, "\n\n".join(failures)
