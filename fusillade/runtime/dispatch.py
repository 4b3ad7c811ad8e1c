"""Send one claimed request upstream and turn what happened into an ``Outcome``.

Theory of operation
-------------------
One httpx connection pool does not scale with concurrency (its bookkeeping grows with
the number of connections; see docs/performance.md), so requests are spread over
*shards*: pools of at most ``connections_per_client`` connections each. A request goes
to the least-busy shard; a new shard is made when every shard is full.

Requests go straight to each shard's ``httpx.AsyncHTTPTransport``, not through an
``httpx.AsyncClient``: the client's layers (cookies, auth, redirects, event hooks,
default headers, URL merging) do nothing for these requests and cost about a quarter of
the CPU of each one (docs/performance.md, P1). The URL of each endpoint is parsed once.
httpx exceptions are translated here, and only here, into ``TransportError`` outcomes:
the rest of the runtime never sees an httpx exception.

Each request carries ``X-Fusillade-Request-Id`` and ``Idempotency-Key`` (the request
id, stable across attempts, so an upstream that deduplicates can), the batch id, and
the ``custom_id`` when it is safe as a header value. The api key is attached here, at
send time, and never logged.
"""

from __future__ import annotations

import json
import re
import ssl
from collections.abc import Mapping

import anyio
import attrs
import httpx

from fusillade._version import __version__
from fusillade.core.attempts import ClaimedRequest
from fusillade.core.bodies import body_of, shown
from fusillade.core.results import parse_embeddable
from fusillade.core.retry import HttpResponse, Outcome, TransportError, TransportErrorKind
from fusillade.runtime.config import DaemonConfig

# Printable ASCII without CR/LF, short enough for any proxy: safe as a header value.
_HEADER_SAFE = re.compile(r"[\x20-\x7e]{1,256}")
_USER_AGENT = f"fusillade/{__version__}"


@attrs.frozen
class Sent:
    """An outcome with what the result line needs: token usage of a success, its body as
    ``parse_embeddable`` made it when it is strict JSON (stored so downloads need not parse),
    and the exact bytes of the body when its text is only a rendering of them
    (``fusillade.core.bodies``)."""

    outcome: Outcome
    input_tokens: int | None = None
    output_tokens: int | None = None
    json_body: str | None = None
    body_raw: bytes | None = attrs.field(default=None, repr=False)


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


def _translate(exc: Exception, url: httpx.URL) -> TransportError:
    """``exc`` as a ``TransportError`` naming the upstream's host and port (never the
    whole URL: its userinfo may be a credential)."""
    for cls, kind in _HTTPX_ERRORS:
        if isinstance(exc, cls):
            where = f"upstream {host_port(url)}"
            return TransportError(kind, f"{kind.value}: {type(exc).__name__} ({where})")
    raise exc


def host_port(url: httpx.URL) -> str:
    """``host:port`` of ``url`` (the scheme's default port when none is given; an IPv6
    host in brackets): what names an upstream in a message."""
    port = url.port or {"http": 80, "https": 443}.get(url.scheme)
    host = f"[{url.host}]" if ":" in url.host else url.host
    return host if port is None else f"{host}:{port}"


class _Shard:
    def __init__(self, transport: httpx.AsyncBaseTransport) -> None:
        self.transport = transport
        self.active = 0


# Parsed URLs kept per URL string; a config has a handful of endpoints and paths, so
# reaching this many means something is unusual: start again rather than grow.
_MAX_CACHED_URLS = 1024


class Dispatcher:
    """Sends claimed requests over sharded httpx transports. Use as an async context."""

    def __init__(
        self, config: DaemonConfig, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.config = config
        self._transport = transport  # tests pass a real in-process transport
        self._shards: list[_Shard] = []
        self._urls: dict[str, httpx.URL] = {}
        # One TLS context for every shard: making one loads the CA bundle (~30 ms).
        self._tls: ssl.SSLContext | None = None
        # httpx's per-request timeout extension: read and write bounded like the whole
        # request, no pool timeout (a shard never has more requests than connections).
        self._request_timeout = config.request_timeout.total_seconds()
        self._timeouts = {
            "connect": config.connect_timeout.total_seconds(),
            "read": self._request_timeout,
            "write": self._request_timeout,
            "pool": None,
        }

    async def __aenter__(self) -> Dispatcher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        shards, self._shards = self._shards, []
        with anyio.CancelScope(shield=True):
            if self._transport is not None:
                await self._transport.aclose()
                return
            for shard in shards:
                await shard.transport.aclose()

    @property
    def shard_count(self) -> int:
        return len(self._shards)

    def _new_transport(self) -> httpx.AsyncBaseTransport:
        if self._transport is not None:
            return self._transport
        if self._tls is None:
            self._tls = httpx.create_ssl_context(trust_env=False)
        per = self.config.connections_per_client
        return httpx.AsyncHTTPTransport(
            verify=self._tls,
            limits=httpx.Limits(max_connections=per, max_keepalive_connections=per),
            trust_env=False,
        )

    def _pick_shard(self) -> _Shard:
        best = min(self._shards, key=lambda s: s.active, default=None)
        if best is None or best.active >= self.config.connections_per_client:
            best = _Shard(self._new_transport())
            self._shards.append(best)
        return best

    def _url(self, text: str) -> httpx.URL:
        url = self._urls.get(text)
        if url is None:
            if len(self._urls) >= _MAX_CACHED_URLS:
                self._urls.clear()
            url = self._urls[text] = httpx.URL(text)
        return url

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
            "user-agent": _USER_AGENT,
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
        target = self._url(url)
        try:
            request = httpx.Request(
                req.method,
                target,
                content=req.body.encode(),
                headers=headers,
                extensions={"timeout": self._timeouts},
            )
            with anyio.move_on_after(self._request_timeout) as scope:
                response = await shard.transport.handle_async_request(request)
                try:
                    await response.aread()
                finally:
                    await response.aclose()
            if scope.cancelled_caught:
                return Sent(TransportError(TransportErrorKind.READ_TIMEOUT, "request timed out"))
        except httpx.HTTPError as exc:
            return Sent(_translate(exc, target))
        finally:
            shard.active -= 1
        # The bytes, never ``response.text``: text decoding is lossy (body_of keeps them).
        return _outcome(response.status_code, response.headers, response.content)


def _outcome(status: int, headers: Mapping[str, str], content: bytes) -> Sent:
    stored = body_of(content)
    outcome = HttpResponse(status, dict(headers), stored.text)
    if not 200 <= status < 300:
        return Sent(outcome, body_raw=stored.raw)
    # Parsed as a result line shows it: a NUL byte is no more JSON than before; bytes
    # that are not UTF-8 parse as their U+FFFD rendering, as httpx's text decoded them.
    text, _ = shown(stored.text, stored.raw)
    parsed = parse_embeddable(text)
    canonical: str | None = None
    if parsed is not None:
        body, canonical = parsed
        if stored.raw is not None:
            canonical = None  # not the exact bytes: stored as the rendering, parsed on download
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
    return Sent(outcome, inp, out, canonical, stored.raw)
