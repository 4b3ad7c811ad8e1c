"""``run``'s preflight lines that need no network: routing and unset key variables."""

from __future__ import annotations

import pytest

from fusillade.cli.preflight import key_warnings, routing_problems
from fusillade.runtime.config import DaemonConfig, Upstream

ROUTED = DaemonConfig(
    upstreams={"vllm": Upstream("http://gpu:8001/v1", "VLLM_KEY")},
    model_upstreams={"llama": "vllm"},
)


def test_every_model_routed_is_no_problem() -> None:
    assert routing_problems(ROUTED, ["llama"]) == []
    default = DaemonConfig(upstreams={"default": Upstream("http://h")}, default_upstream="default")
    assert routing_problems(default, ["a", "b"]) == []


def test_unrouted_models_are_one_line_saying_to_pass_upstream() -> None:
    assert routing_problems(ROUTED, ["llama", "b", "a", "d", "c", "a"]) == [
        "no upstream for model 'a', 'b', 'c' and 1 more: pass --upstream URL (the server's "
        "root, such as http://127.0.0.1:8001), or route it in the configuration "
        '([models."a"] upstream, or default_upstream)'
    ]


def test_an_unset_or_empty_key_variable_of_a_used_upstream_warns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("VLLM_KEY", raising=False)
    warning = (
        "warning: $VLLM_KEY is unset: requests to gpu:8001 go without an api key (set it, "
        "or name another variable with [upstreams.vllm] api_key_env)"
    )
    assert key_warnings(ROUTED, ["llama"]) == [warning]
    assert key_warnings(ROUTED, ["other"]) == []  # vllm is not used
    monkeypatch.setenv("VLLM_KEY", "")
    assert key_warnings(ROUTED, ["llama"]) == [warning]
    monkeypatch.setenv("VLLM_KEY", "k")
    assert key_warnings(ROUTED, ["llama"]) == []


def test_an_upstream_without_a_key_variable_does_not_warn() -> None:
    config = DaemonConfig(upstreams={"local": Upstream("http://h")}, default_upstream="local")
    assert key_warnings(config, ["m"]) == []
