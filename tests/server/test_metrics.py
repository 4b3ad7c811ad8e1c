"""``GET /metrics``: a label set bounded by the configuration, and the operator's metrics key.

Request bodies choose the ``model``; labelling metrics by it let one batch of invented
names grow ``/metrics`` from 6 KB to 2 MB, for good, and showed every tenant's model
names to anyone who could read it (issue 11, item 8).
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from typing import Any

import attrs
import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families
from serverkit import UPSTREAM_KEY, UPSTREAM_KEY_ENV, jsonl, settings_for, wait_status_json

from fusillade.config import ApiKey, ModelSettings
from fusillade.errors import ConfigError
from fusillade.metrics import OTHER_MODELS
from fusillade.mock_upstream import MockUpstream
from fusillade.server.auth import load_keys, load_metrics_key
from fusillade.server.serve import Running, serve

CONFIGURED = "configured-model"
INVENTED = "tenant-secret-model"  # every invented name contains it
METRICS_KEY_ENV = "FUSILLADE_TEST_METRICS_KEY"
METRICS_KEY = "sk-metrics-4c1f8a2e9b7d"
ALICE_KEY_ENV = "FUSILLADE_TEST_METRICS_ALICE"
ALICE_KEY = "sk-alice-9d8e7f6a5b4c"


async def start(
    nursery: trio.Nursery, database_url: str, upstream_url: str, **server: Any
) -> Running:
    """``serve`` with ``CONFIGURED`` listed in ``[models]`` and a daemon on the mock upstream."""
    settings = settings_for(database_url, upstream_url, **server)
    settings = attrs.evolve(settings, models={CONFIGURED: ModelSettings()})
    config = attrs.evolve(settings.daemon_config(), poll_interval=0.1)
    running: Running = await nursery.start(
        lambda task_status: serve(
            settings, daemon_config=config, migrate=False, task_status=task_status
        )
    )
    return running


def model_labels(text: str) -> set[str]:
    return {
        sample.labels["model"]
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if "model" in sample.labels
    }


def completed(text: str, model: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "fusillade_requests_completed_total" and sample.labels == {
                "model": model,
                "status": "200",
            }:
                return sample.value
    return 0.0


def chat_lines(models: Iterable[str]) -> list[dict[str, Any]]:
    return [
        {
            "custom_id": f"r{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": "hi"}]},
        }
        for i, model in enumerate(models)
    ]


async def test_metrics_stay_bounded_and_name_no_model_a_client_invented(
    nursery: trio.Nursery,
    database_url: str,
    mock_upstream: MockUpstream,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(UPSTREAM_KEY_ENV, UPSTREAM_KEY)
    running = await start(nursery, database_url, mock_upstream.url)
    assert running.url is not None
    # 300 distinct names of 220 characters, as in the report; and 5 of a configured model
    invented = [f"{INVENTED}-{i:03d}-" + "x" * 200 for i in range(300)]
    lines = chat_lines([*invented, *[CONFIGURED] * 5])
    async with httpx.AsyncClient(base_url=running.url, timeout=30) as api:
        before = (await api.get("/metrics")).text
        upload = await api.post(
            "/v1/files",
            files={"file": ("in.jsonl", io.BytesIO(jsonl(lines)))},
            data={"purpose": "batch"},
        )
        assert upload.status_code == 200, upload.text
        batch = await api.post(
            "/v1/batches",
            json={
                "input_file_id": upload.json()["id"],
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
            },
        )
        assert batch.status_code == 200, batch.text
        done = await wait_status_json(api, batch.json()["id"], "completed")
        assert done["request_counts"]["completed"] == len(lines)
        after = (await api.get("/metrics")).text
    running.stop()

    assert INVENTED not in after
    assert not {label for label in model_labels(after) if INVENTED in label}
    # one label set for all 300 names (about 3 KB), against 2 MB when each had its own
    assert len(after) - len(before) < 20_000, len(after) - len(before)
    assert completed(after, OTHER_MODELS) - completed(before, OTHER_MODELS) == 300
    assert completed(after, CONFIGURED) - completed(before, CONFIGURED) == 5


async def test_metrics_key_opens_metrics_and_nothing_else(
    nursery: trio.Nursery,
    database_url: str,
    mock_upstream: MockUpstream,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in (
        (UPSTREAM_KEY_ENV, UPSTREAM_KEY),
        (METRICS_KEY_ENV, METRICS_KEY),
        (ALICE_KEY_ENV, ALICE_KEY),
    ):
        monkeypatch.setenv(name, value)
    running = await start(
        nursery,
        database_url,
        mock_upstream.url,
        api_keys=[ApiKey(ALICE_KEY_ENV, "alice")],
        metrics_key_env=METRICS_KEY_ENV,
    )
    assert running.url is not None

    def bearer(key: str) -> dict[str, str]:
        return {"authorization": f"Bearer {key}"}

    async with httpx.AsyncClient(base_url=running.url, timeout=30) as c:
        basic = {"authorization": f"Basic {METRICS_KEY}"}
        for headers in ({}, bearer(ALICE_KEY), bearer(METRICS_KEY + "x"), basic):
            refused = await c.get("/metrics", headers=headers)
            assert refused.status_code == 401, (headers, refused.text)
            assert refused.headers["www-authenticate"] == "Bearer"
            assert "fusillade_" not in refused.text
        scraped = await c.get("/metrics", headers=bearer(METRICS_KEY))
        assert scraped.status_code == 200, scraped.text
        assert "fusillade_requests_claimed" in scraped.text
        assert METRICS_KEY not in scraped.text
        # the scraper's key is not an owner's key
        files = await c.get("/v1/files", headers=bearer(METRICS_KEY))
        assert files.status_code == 401
        # the other operational routes stay open
        for path in ("/healthz", "/readyz"):
            assert (await c.get(path)).status_code == 200, path
    running.stop()


def test_metrics_key_must_be_set_and_distinct_from_every_api_key() -> None:
    keys = load_keys([ApiKey(ALICE_KEY_ENV, "alice")], {ALICE_KEY_ENV: ALICE_KEY})
    assert not load_metrics_key(None, keys, {}).enabled
    ring = load_metrics_key(METRICS_KEY_ENV, keys, {METRICS_KEY_ENV: METRICS_KEY})
    assert ring.enabled
    assert METRICS_KEY not in repr(ring)
    with pytest.raises(ConfigError, match=f"{METRICS_KEY_ENV} is not set"):
        load_metrics_key(METRICS_KEY_ENV, keys, {METRICS_KEY_ENV: ""})
    with pytest.raises(ConfigError, match="same key as an entry of api_keys") as info:
        load_metrics_key(METRICS_KEY_ENV, keys, {METRICS_KEY_ENV: ALICE_KEY})
    assert ALICE_KEY not in str(info.value)
