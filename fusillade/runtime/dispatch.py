"""Send one claimed request upstream and turn what happened into an ``Outcome``.

Theory of operation
-------------------
By default (``[daemon] sender = "httptools"``) requests go out through keep-alive pools
on httptools' parser, one per upstream host (``http1.py``): chosen by measurement over
httpcore, pycurl and h11 (docs/performance.md, "Issue 16: the sender"). Those pools raise
httpcore's exceptions for the same faults, translated here the same way as httpcore's own
(tests/runtime/test_dispatch_senders.py runs each fault through both senders).

With ``sender = "httpcore"`` (the sender before 0.2) requests are spread over *shards*:
httpcore pools of at most ``connections_per_client`` connections each, since one pool
does not scale with concurrency (its bookkeeping grows with the square of its
connections). A request takes a shard with a free connection from a stack (O(1) at
thousands of shards); a new shard is made when every shard is full.

Neither goes through httpx's client: its layers (cookies, auth, redirects, hooks, URL
merging) do nothing for these requests, and its request and response models cost about
a fifth of each request's CPU (docs/performance.md, P12). The headers are the ones httpx
would send; the URL of each endpoint is parsed once. A transport passed in (tests) is
used through httpx instead. httpx and httpcore exceptions are translated here, and only
here, into ``TransportError`` outcomes: the rest of the runtime never sees one. Answers
are processed first come first served (``fair_reads.py``).

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
import httpcore
import httpx

from fusillade._version import __version__
from fusillade.core.attempts import ClaimedRequest
from fusillade.core.bodies import body_of, shown
from fusillade.core.results import parse_embeddable
from fusillade.core.retry import HttpResponse, Outcome, TransportError, TransportErrorKind
from fusillade.runtime.config import DaemonConfig
from fusillade.runtime.fair_reads import FairBackend, Turns
from fusillade.runtime.http1 import Proxy, Sender, request_bytes

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


# The same for httpcore's exceptions (sent straight through httpcore, not httpx): each
# httpx class above has an httpcore one of the same name, which httpx maps to it.
_HTTPCORE_KINDS: tuple[tuple[type[Exception], TransportErrorKind], ...] = (
    (httpcore.ConnectTimeout, TransportErrorKind.CONNECT_TIMEOUT),
    (httpcore.ReadTimeout, TransportErrorKind.READ_TIMEOUT),
    (httpcore.WriteTimeout, TransportErrorKind.WRITE_TIMEOUT),
    (httpcore.PoolTimeout, TransportErrorKind.POOL_TIMEOUT),
    (httpcore.ConnectError, TransportErrorKind.CONNECT),
    (httpcore.ReadError, TransportErrorKind.READ),
    (httpcore.WriteError, TransportErrorKind.WRITE),
    (httpcore.LocalProtocolError, TransportErrorKind.BUILDER),
    (httpcore.RemoteProtocolError, TransportErrorKind.PROTOCOL),
    (httpcore.UnsupportedProtocol, TransportErrorKind.BUILDER),
    # the rest of httpx's TransportError: timeouts, network, protocol and proxy errors
    (httpcore.TimeoutException, TransportErrorKind.PROTOCOL),
    (httpcore.NetworkError, TransportErrorKind.PROTOCOL),
    (httpcore.ProtocolError, TransportErrorKind.PROTOCOL),
    (httpcore.ProxyError, TransportErrorKind.PROTOCOL),
)
# what send turns into a TransportError outcome
_SEND_ERRORS: tuple[type[Exception], ...] = (
    httpx.HTTPError,
    *(cls for cls, _ in _HTTPCORE_KINDS),
)


def _translate(exc: Exception, url: httpx.URL) -> TransportError:
    """``exc`` as a ``TransportError`` naming the upstream's host and port (never the
    whole URL: its userinfo may be a credential)."""
    for cls, kind in (*_HTTPX_ERRORS, *_HTTPCORE_KINDS):
        if isinstance(exc, cls):
            where = f"upstream {host_port(url)}"
            what = type(exc).__name__
            if isinstance(exc, httpcore.ProxyError):
                # only http1's own messages ("the proxy answered 407 to CONNECT"): the
                # proxy's status is what an operator needs, and they hold no secret
                what = f"{what}: {exc}"
            return TransportError(kind, f"{kind.value}: {what} ({where})")
    raise exc


def host_port(url: httpx.URL) -> str:
    """``host:port`` of ``url`` (the scheme's default port when none is given; an IPv6
    host in brackets): what names an upstream in a message."""
    port = url.port or {"http": 80, "https": 443}.get(url.scheme)
    host = f"[{url.host}]" if ":" in url.host else url.host
    return host if port is None else f"{host}:{port}"


class _Shard:
    """One connection pool (or the injected transport, which tests pass) and how many
    requests it carries now."""

    __slots__ = ("active", "pool", "transport")

    def __init__(
        self,
        pool: httpcore.AsyncConnectionPool | None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.pool = pool
        self.transport = transport
        self.active = 0


class _Target:
    """A URL parsed once: httpcore's URL and the Host header httpx would send."""

    __slots__ = ("host", "parsed", "url")

    def __init__(self, url: httpx.URL) -> None:
        self.parsed = url
        self.url = httpcore.URL(
            scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path
        )
        self.host = url.netloc


# Parsed URLs kept per URL string; a config has a handful of endpoints and paths, so
# reaching this many means something is unusual: start again rather than grow.
_MAX_CACHED_URLS = 1024
# httpx's default keep-alive expiry (httpx.Limits), which the transports had
_KEEPALIVE_EXPIRY = 5.0
# Answers processed at once, first come first served (fair_reads.py). Enough to keep the
# event loop busy (each yields a dozen times); few enough that the first answers of a
# wave of thousands finish first. P12: 32 and 8 gave the same.
_ANSWER_TURNS = 32


class Dispatcher:
    """Sends claimed requests over sharded connection pools. Use as an async context."""

    def __init__(
        self, config: DaemonConfig, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.config = config
        self._transport = transport  # tests pass a real in-process transport
        self._shards: list[_Shard] = []
        # The shards with a free connection, the one to use next on top: a shard is
        # taken from the top and leaves the stack when full, and comes back on top when a
        # request of a full one ends. O(1) per request at any number of shards (picking
        # the least busy by a scan cost 0.15 ms a request at 1,000 shards).
        self._with_room: list[_Shard] = []
        self._targets: dict[str, _Target] = {}
        self.turns = Turns(_ANSWER_TURNS)
        self._backend = FairBackend(self.turns)
        # One TLS context for every shard: making one loads the CA bundle (~30 ms).
        self._tls: ssl.SSLContext | None = None
        # [daemon] sender = "httptools": keep-alive pools on httptools' parser instead of
        # httpcore's shards (http1.py); an injected transport still goes through httpx.
        self._h1: Sender | None = None
        if config.sender == "httptools" and transport is None:
            self._h1 = Sender(
                tls=self._tls_context,
                connect_timeout=config.connect_timeout.total_seconds(),
                keepalive_expiry=_KEEPALIVE_EXPIRY,
                turns=self.turns,
                proxy=Proxy(config.proxy, config.no_proxy) if config.proxy else None,
            )
        # httpcore's per-request timeouts: read and write bounded like the whole
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
        shards, self._shards, self._with_room = self._shards, [], []
        if self._h1 is not None:
            await self._h1.aclose()
        with anyio.CancelScope(shield=True):
            if self._transport is not None:
                await self._transport.aclose()
                return
            for shard in shards:
                assert shard.pool is not None
                await shard.pool.aclose()

    @property
    def shard_count(self) -> int:
        """Connection pools in use: httpcore's shards, or httptools' pools (one per
        upstream host)."""
        if self._h1 is not None:
            return len(self._h1.pools)
        return len(self._shards)

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = httpx.create_ssl_context(trust_env=False)
        return self._tls

    def _new_shard(self) -> _Shard:
        if self._transport is not None:
            return _Shard(None, self._transport)
        per = self.config.connections_per_client
        # what httpx.AsyncHTTPTransport(verify=tls, limits=Limits(per, per)) builds
        pool = httpcore.AsyncConnectionPool(
            ssl_context=self._tls_context(),
            max_connections=per,
            max_keepalive_connections=per,
            keepalive_expiry=_KEEPALIVE_EXPIRY,
            network_backend=self._backend,
        )
        return _Shard(pool)

    def _take_shard(self) -> _Shard:
        if not self._with_room:
            shard = self._new_shard()
            self._shards.append(shard)
            self._with_room.append(shard)
        shard = self._with_room[-1]
        shard.active += 1
        if shard.active >= self.config.connections_per_client:
            self._with_room.pop()
        return shard

    def _return_shard(self, shard: _Shard) -> None:
        if shard.active == self.config.connections_per_client:
            self._with_room.append(shard)
        shard.active -= 1

    def _target(self, text: str) -> _Target:
        target = self._targets.get(text)
        if target is None:
            if len(self._targets) >= _MAX_CACHED_URLS:
                self._targets.clear()
            target = self._targets[text] = _Target(httpx.URL(text))
        return target

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
        target = self._target(url)
        if self._h1 is not None:
            return await self._send_h1(req, target, headers)
        shard = self._take_shard()
        try:
            with anyio.move_on_after(self._request_timeout) as scope:
                if shard.pool is not None:
                    status, raw_headers, content = await self._exchange(
                        shard.pool, req, target, headers
                    )
                else:
                    assert shard.transport is not None
                    status, raw_headers, content = await _exchange_httpx(
                        shard.transport, req, target, headers, self._timeouts
                    )
            if scope.cancelled_caught:
                return Sent(TransportError(TransportErrorKind.READ_TIMEOUT, "request timed out"))
        except _SEND_ERRORS as exc:
            return Sent(_translate(exc, target.parsed))
        finally:
            self.turns.end()  # the answer is read (or abandoned)
            self._return_shard(shard)
        # The bytes, never the text: text decoding is lossy (body_of keeps them).
        return _outcome(status, _header_dict(raw_headers), content)

    async def _send_h1(self, req: ClaimedRequest, target: _Target, headers: dict[str, str]) -> Sent:
        """``send`` through the httptools sender (http1.py): the same timeouts, the
        same translation of its (httpcore) exceptions."""
        assert self._h1 is not None
        url = target.url
        try:
            with anyio.move_on_after(self._request_timeout) as scope:
                pool = await self._h1.pool(url.scheme, url.host, url.port)
                request = request_bytes(
                    req.method,
                    pool.target_prefix + url.target,
                    target.host,
                    headers,
                    req.body.encode(),
                    pool.proxy_header,
                )
                status, raw_headers, content = await pool.exchange(
                    request, head_only=req.method == "HEAD"
                )
            if scope.cancelled_caught:
                return Sent(TransportError(TransportErrorKind.READ_TIMEOUT, "request timed out"))
        except _SEND_ERRORS as exc:
            return Sent(_translate(exc, target.parsed))
        finally:
            self.turns.end()  # the answer is read (or abandoned)
        return _outcome(status, _header_dict(raw_headers), content)

    async def _exchange(
        self,
        pool: httpcore.AsyncConnectionPool,
        req: ClaimedRequest,
        target: _Target,
        headers: dict[str, str],
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """One request straight through httpcore, with the headers httpx would send
        (Host first, Content-Length last): httpx's request and response layers cost
        about a fifth of each request's CPU (docs/performance.md, P12)."""
        content = req.body.encode()
        raw = [(b"Host", target.host)]
        raw += [(k.encode("ascii"), v.encode("ascii")) for k, v in headers.items()]
        if content:
            raw.append((b"Content-Length", str(len(content)).encode("ascii")))
        elif req.method in ("POST", "PUT", "PATCH"):
            raw.insert(1, (b"Content-Length", b"0"))
        request = httpcore.Request(
            req.method.encode("ascii"),
            target.url,
            headers=raw,
            content=content,
            extensions={"timeout": self._timeouts},
        )
        response = await pool.handle_async_request(request)
        try:
            body = await response.aread()
        finally:
            await response.aclose()
        return response.status, response.headers, body


async def _exchange_httpx(
    transport: httpx.AsyncBaseTransport,
    req: ClaimedRequest,
    target: _Target,
    headers: dict[str, str],
    timeouts: dict[str, float | None],
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """One request through an injected httpx transport (tests)."""
    request = httpx.Request(
        req.method,
        target.parsed,
        content=req.body.encode(),
        headers=headers,
        extensions={"timeout": timeouts},
    )
    response = await transport.handle_async_request(request)
    try:
        await response.aread()
    finally:
        await response.aclose()
    return response.status_code, response.headers.raw, response.content


def _header_dict(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """The response headers as ``dict(httpx.Headers(raw))`` gives them: names lower-cased,
    repeated ones joined with ", ", decoded as ASCII, else UTF-8, else Latin-1."""
    encoding = "iso-8859-1"  # decodes any bytes
    for candidate in ("ascii", "utf-8"):
        try:
            for name, value in raw:
                name.decode(candidate)
                value.decode(candidate)
        except UnicodeDecodeError:
            continue
        encoding = candidate
        break
    out: dict[str, str] = {}
    for name, value in raw:
        key = name.decode(encoding).lower()
        text = value.decode(encoding)
        out[key] = f"{out[key]}, {text}" if key in out else text
    return out


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
