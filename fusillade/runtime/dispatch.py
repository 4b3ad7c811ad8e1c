"""Send one claimed request upstream and turn what happened into an ``Outcome``.

Theory of operation
-------------------
One ``httpx.AsyncClient`` does not scale with concurrency (its pool bookkeeping grows
with the number of connections; see docs/performance.md), so requests are spread over
*shards*: clients of at most ``connections_per_client`` connections each. A request
goes to the least-busy shard; a new shard is made when every shard is full. httpx
exceptions are translated here, and only here, into ``TransportError`` outcomes: the
rest of the runtime never sees an httpx exception.

Each request carries ``X-Fusillade-Request-Id`` and ``Idempotency-Key`` (the request
id, stable across attempts, so an upstream that deduplicates can), the batch id, and
the ``custom_id`` when it is safe as a header value. The api key is attached here, at
send time, and never logged.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

import anyio
import attrs
import httpx

from fusillade.core.results import parse_embeddable
from fusillade.core.retry import HttpResponse, Outcome, TransportError, TransportErrorKind
from fusillade.runtime.config import DaemonConfig
from fusillade.store.interface import ClaimedRequest

# Printable ASCII without CR/LF, short enough for any proxy: safe as a header value.
_HEADER_SAFE = re.compile(r"[\x20-\x7e]{1,256}")


@attrs.frozen
class Sent:
    """An outcome with what the result line needs: token usage of a success, and its body
    as ``parse_embeddable`` made it when it is strict JSON (stored so downloads need not parse)."""

    outcome: Outcome
    input_tokens: int | None = None
    output_tokens: int | None = None
    json_body: str | None = None


def join_url(base_url: str, path: str) -> str:
    """``base_url`` + ``path``, accepting a base with or without a trailing ``/v1``."""
    base = base_url.rstrip("/")
    if base.endswith("/v1") and (path == "/v1" or path.startswith("/v1/")):
        base = base[: -len("/v1")]
    return base + (path if path.startswith("/") else "/" + path)


def usage_of(body: object) -> tuple[int | None, int | None]:
    """Input and output tokens of an OpenAI-style body (chat, completions, responses)."""
    if not isinstance(body, dict):
        return None, None
    usage = body.get("usage")
    if not isinstance(usage, dict):
        return None, None
    inp = usage.get("prompt_tokens", usage.get("input_tokens"))
    out = usage.get("completion_tokens", usage.get("output_tokens"))
    return (
        inp if isinstance(inp, int) and not isinstance(inp, bool) else None,
        out if isinstance(out, int) and not isinstance(out, bool) else None,
    )


_HTTPX_ERRORS: tuple[tuple[type[Exception], TransportErrorKind], ...] = (
    (httpx.ConnectTimeout, TransportErrorKind.CONNECT_TIMEOUT),
    (httpx.ReadTimeout, TransportErrorKind.READ_TIMEOUT),
    (httpx.WriteTimeout, TransportErrorKind.WRITE_TIMEOUT),
    (httpx.PoolTimeout, TransportErrorKind.POOL_TIMEOUT),
    (httpx.ConnectError, TransportErrorKind.CONNECT),
    (httpx.ReadError, TransportErrorKind.READ),
    (httpx.WriteError, TransportErrorKind.WRITE),
    (httpx.LocalProtocolError, TransportErrorKind.BUILDER),
    (httpx.RemoteProtocolError, TransportErrorKind.PROTOCOL),
    (httpx.UnsupportedProtocol, TransportErrorKind.BUILDER),
    (httpx.InvalidURL, TransportErrorKind.BUILDER),
    (httpx.TransportError, TransportErrorKind.PROTOCOL),
)


def _translate(exc: Exception) -> TransportError:
    for cls, kind in _HTTPX_ERRORS:
        if isinstance(exc, cls):
            return TransportError(kind, f"{kind.value}: {type(exc).__name__}")
    raise exc


class _Shard:
    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.active = 0


class Dispatcher:
    """Sends claimed requests over sharded httpx clients. Use as an async context."""

    def __init__(
        self, config: DaemonConfig, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.config = config
        self._transport = transport  # tests pass a real in-process transport
        self._shards: list[_Shard] = []

    async def __aenter__(self) -> Dispatcher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        shards, self._shards = self._shards, []
        with anyio.CancelScope(shield=True):
            for shard in shards:
                await shard.client.aclose()

    @property
    def shard_count(self) -> int:
        return len(self._shards)

    def _new_client(self) -> httpx.AsyncClient:
        per = self.config.connections_per_client
        timeout = httpx.Timeout(
            self.config.request_timeout, connect=self.config.connect_timeout, pool=None
        )
        return httpx.AsyncClient(
            limits=httpx.Limits(max_connections=per, max_keepalive_connections=per),
            timeout=timeout,
            transport=self._transport,
            follow_redirects=False,
            trust_env=False,
        )

    def _pick_shard(self) -> _Shard:
        best = min(self._shards, key=lambda s: s.active, default=None)
        if best is None or best.active >= self.config.connections_per_client:
            best = _Shard(self._new_client())
            self._shards.append(best)
        return best

    def build(self, req: ClaimedRequest) -> tuple[str, dict[str, str]] | TransportError:
        """The URL and headers for ``req``, or a builder error (permanent)."""
        base = req.endpoint
        upstream = self.config.upstream_for(req.model)
        if not base:
            if upstream is None:
                return TransportError(
                    TransportErrorKind.BUILDER, f"no upstream configured for model {req.model!r}"
                )
            base = upstream.base_url
        api_key = req.api_key or (upstream.api_key() if upstream is not None else None)
        headers = {
            "content-type": "application/json",
            "x-fusillade-request-id": str(req.id),
            "idempotency-key": str(req.id),
            "x-fusillade-batch-id": str(req.batch_id),
        }
        if _HEADER_SAFE.fullmatch(req.custom_id):
            headers["x-fusillade-custom-id"] = req.custom_id
        if api_key:
            if not _HEADER_SAFE.fullmatch(api_key):
                return TransportError(
                    TransportErrorKind.BUILDER, "the api key is not a valid header value"
                )
            headers["authorization"] = f"Bearer {api_key}"
        return join_url(base, req.path), headers

    async def send(self, req: ClaimedRequest) -> Sent:
        """Send ``req`` once. Never raises for upstream or network trouble."""
        built = self.build(req)
        if isinstance(built, TransportError):
            return Sent(built)
        url, headers = built
        shard = self._pick_shard()
        shard.active += 1
        try:
            with anyio.move_on_after(self.config.request_timeout) as scope:
                response = await shard.client.request(
                    req.method, url, content=req.body.encode(), headers=headers
                )
            if scope.cancelled_caught:
                return Sent(TransportError(TransportErrorKind.READ_TIMEOUT, "request timed out"))
        except httpx.HTTPError as exc:
            return Sent(_translate(exc))
        finally:
            shard.active -= 1
        return _outcome(response.status_code, response.headers, response.text)


def _outcome(status: int, headers: Mapping[str, str], text: str) -> Sent:
    outcome = HttpResponse(status, dict(headers), text)
    if not 200 <= status < 300:
        return Sent(outcome)
    parsed = parse_embeddable(text)
    canonical: str | None = None
    if parsed is not None:
        body, canonical = parsed
    else:
        try:
            body = json.loads(text)  # lax JSON (duplicate keys, NaN) is still a result
        except (ValueError, RecursionError):
            # A 2xx whose body is not JSON is a broken answer (a proxy page, a cut
            # stream), not a result: retry it like a protocol error.
            return Sent(
                TransportError(
                    TransportErrorKind.PROTOCOL, f"upstream answered {status} with a non-JSON body"
                )
            )
    inp, out = usage_of(body)
    return Sent(outcome, inp, out, canonical)
