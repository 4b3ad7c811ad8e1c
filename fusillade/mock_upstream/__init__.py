"""An OpenAI-compatible fake upstream for tests, benchmarks and trying fusillade out.

``python -m fusillade mock-upstream`` serves it; tests run it in process::

    server = await nursery.start(serve_mock_upstream, MockConfig(default=Behaviour(latency=0.1)))
    server.config.per_model["m-fail"] = Behaviour(status=500)
    ...
    assert server.stats.by_model["m-fail"] == 3

Routes: ``POST /v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``,
``/v1/responses``, ``/v1/moderations`` (deterministic answers echoing the request, with
``usage``); ``GET /v1/models`` (an OpenAI model list, not counted); ``GET /health``;
``GET /_stats``, ``POST /_reset``, ``GET``/``POST /_config``, ``POST /_release`` for tests
out of process. Faults are a ``Behaviour`` (see its docstring),
chosen per model and overridden per request by ``x-mock-<field>`` headers (``x-mock-status:
429``, ``x-mock-delay: 0.5``). ``rpm``, ``tpm`` and ``max_in_flight`` enforce OpenAI's rate
limits, with its 429s and ``x-ratelimit-*`` headers (``_limits``).

``serve_mock_upstream`` and ``MockUpstream`` are imported on first use: they need trio, and the
command line imports this package to build its ``--help``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fusillade.mock_upstream._behaviour import OPTIONS, Behaviour, MockConfig, Option
from fusillade.mock_upstream._stats import MockStats

if TYPE_CHECKING:
    from fusillade.mock_upstream._server import MockUpstream, serve_mock_upstream

__all__ = [
    "OPTIONS",
    "Behaviour",
    "MockConfig",
    "MockStats",
    "MockUpstream",
    "Option",
    "serve_mock_upstream",
]

_LAZY = frozenset({"MockUpstream", "serve_mock_upstream"})


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from fusillade.mock_upstream import _server

        return getattr(_server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
