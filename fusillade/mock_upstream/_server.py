"""The mock upstream server: routes, faults, counters, and ``serve_mock_upstream``.

Theory of operation: ``serve_mock_upstream`` listens and runs one task per connection
(``trio.serve_listeners``); each task reads a request, answers it and loops while the
connection stays open (keep-alive). An API request is counted in ``stats`` as soon as its body
has arrived, then its ``Behaviour`` (per model, else the default, then the request's
``x-mock-*`` headers) decides the answer: first its rate limits (``_limits``, on
``trio.current_time()``), then its faults. Every API request draws the same six numbers
from one ``random.Random(config.seed)`` whatever its behaviour, so a sequential run replays.
Every change to ``stats`` wakes ``wait_until`` waiters, so tests never poll or sleep.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from collections import Counter
from collections.abc import Callable
from email.utils import formatdate
from typing import Any

import attrs
import h11
import trio

from fusillade.mock_upstream import _bodies
from fusillade.mock_upstream._behaviour import Behaviour, MockConfig
from fusillade.mock_upstream._http import BodyTooLarge, HttpConnection, Request
from fusillade.mock_upstream._limits import (
    Decision,
    Limits,
    Quota,
    RateLimiter,
    format_duration,
    token_cost,
    whole_ms,
)
from fusillade.mock_upstream._stats import REQUEST_ID_HEADER, MockStats

Headers = list[tuple[bytes, bytes]]
JSON_HEADERS: Headers = [(b"content-type", b"application/json")]
NOT_JSON = b'{"id": "mock", "object": "chat.completion", "choices": [ <<< not JSON'


def _json(data: object) -> bytes:
    return json.dumps(data, ensure_ascii=False).encode("utf-8", "surrogatepass")


@attrs.frozen
class _Draws:
    """The random numbers of one request, drawn whether or not its behaviour uses them."""

    jitter: float
    timeout: float
    reset: float
    rate_limit: float
    error: float
    invalid: float


class _Closed(Exception):
    """The request ended without an answer (timeout or reset): close the connection."""


class MockUpstream:
    """A running mock upstream (what ``serve_mock_upstream`` hands to ``task_status.started``).

    Attributes:
        url: the base URL, such as ``http://127.0.0.1:8001`` (no ``/v1``).
        config: the live ``MockConfig``; assign its fields at any time.
        stats: the live ``MockStats``.
    """

    def __init__(self, config: MockConfig, url: str) -> None:
        self.url = url
        self.config = config
        self.stats = MockStats()
        self._rng = random.Random(config.seed)
        self._seeded_with = config.seed
        self._attempts: Counter[str] = Counter()
        self._limiter = RateLimiter()
        self._changed = trio.Event()
        self._released = trio.Event()

    def reset(self) -> None:
        """Zero the counters (``POST /_reset``), fill the rate-limit buckets again and restart
        the random draws from the seed."""
        self.stats.reset()
        self._limiter.reset()
        self._attempts.clear()
        self._seed()
        self._notify()

    def release_held(self) -> None:
        """Let every request waiting under ``Behaviour(hold=True)`` go on (``POST /_release``)."""
        self._released.set()
        self._released = trio.Event()

    async def wait_until(self, predicate: Callable[[MockStats], bool]) -> None:
        """Wait until ``predicate(stats)`` holds; checked again after every change of the stats.

        Example: ``await server.wait_until(lambda s: s.in_flight_total == 4)`` (put a
        ``trio.fail_after`` around it in tests).
        """
        while not predicate(self.stats):
            await self._changed.wait()

    def _fault(self, kind: str) -> None:
        self.stats.faults[kind] += 1
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _seed(self) -> None:
        self._rng.seed(self.config.seed)
        self._seeded_with = self.config.seed

    # --- connections ------------------------------------------------------------------------

    async def handle_connection(self, stream: trio.SocketStream) -> None:
        """Serve one connection until it closes (the ``trio.serve_listeners`` handler)."""
        self.stats.connections_opened += 1
        self.stats.connections_open += 1
        self._notify()
        connection = HttpConnection(stream)
        try:
            while True:
                request = await connection.next_request()
                if request is None:
                    break
                await self._answer(connection, request)
                if not connection.reusable:
                    break
        except h11.RemoteProtocolError as exc:
            await self._send_error_quietly(connection, exc.error_status_hint, str(exc))
        except BodyTooLarge:
            await self._send_error_quietly(connection, 413, "request body too large")
        except (_Closed, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(stream)
            self.stats.connections_open -= 1
            self._notify()

    async def _send_error_quietly(
        self, connection: HttpConnection, status: int, message: str
    ) -> None:
        gone = (trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError)
        if connection.can_answer:
            with contextlib.suppress(*gone):
                await self._send_error(connection, status, message)

    # --- routes -----------------------------------------------------------------------------

    async def _answer(self, connection: HttpConnection, request: Request) -> None:
        route = (request.method, request.path)
        if request.path in _bodies.ENDPOINTS:
            if request.method != "POST":
                await self._send_error(connection, 405, f"use POST for {request.path}")
            else:
                await self._api(connection, request)
        elif route in (("GET", "/v1/models"), ("GET", "/models")):
            # what clients (and `fusillade run`'s preflight) ask first; not counted
            await self._send_json(connection, 200, _bodies.model_list(self.config.per_model))
        elif route == ("GET", "/health"):
            await self._send_json(connection, 200, {"status": "ok"})
        elif route == ("GET", "/_stats"):
            await self._send_json(connection, 200, self.stats.to_json())
        elif route == ("POST", "/_reset"):
            self.reset()
            await self._send_json(connection, 200, self.stats.to_json())
        elif route == ("POST", "/_release"):
            self.release_held()
            await self._send_json(connection, 200, {"status": "released"})
        elif route == ("GET", "/_config"):
            await self._send_json(connection, 200, self.config.to_json())
        elif route == ("POST", "/_config"):
            await self._configure(connection, request.body)
        else:
            message = f"Unknown request URL: {request.method} {request.path}."
            await self._send_error(connection, 404, message, code="unknown_url")

    async def _configure(self, connection: HttpConnection, body: bytes) -> None:
        try:
            self.config.update_from_json(json.loads(body))
        except ValueError as exc:  # json.JSONDecodeError and UnicodeDecodeError included
            await self._send_error(connection, 400, str(exc))
            return
        if self.config.seed != self._seeded_with:
            self._seed()
        await self._send_json(connection, 200, self.config.to_json())

    async def _api(self, connection: HttpConnection, request: Request) -> None:
        draws = _Draws(*(self._draw() for _ in range(6)))
        try:
            body: Any = json.loads(request.body)
            parsed = True
        except ValueError:  # json.JSONDecodeError and UnicodeDecodeError included
            body, parsed = None, False
        model = body.get("model") if isinstance(body, dict) else None
        model = model if isinstance(model, str) else ""
        total, for_model = self.stats.request_started(model, request.path, request.headers, body)
        self._notify()
        scope: str | None = None
        admitted = False  # by the rate limiter, which then counts it in flight until it ends
        extra: Headers = []  # the x-ratelimit-* headers of every answer
        try:
            if not parsed:
                message = "We could not parse the JSON body of your request."
                await self._send_error(connection, 400, message)
                return
            try:
                behaviour = self.config.behaviour_for(model).with_headers(request.headers)
            except ValueError as exc:
                await self._send_error(connection, 400, str(exc))
                return
            own = model in self.config.per_model  # a per-model behaviour counts per model
            scope = model if own else None
            limits = Limits(
                rpm=behaviour.rpm,
                tpm=behaviour.tpm,
                max_in_flight=behaviour.max_in_flight,
                window=behaviour.rate_window,
            )
            if limits.any_set:
                cost = token_cost(len(request.body), _bodies.max_output_tokens(body))
                decision = self._limiter.admit(scope, limits, cost, trio.current_time())
                admitted = decision.refusal is None
                extra = _limit_headers(decision)
                if not admitted:
                    await self._refuse(connection, decision, extra, behaviour)
                    return
            ordinal = for_model if own else total
            attempt = self._attempt(request.headers.get(REQUEST_ID_HEADER), body, behaviour)
            await self._behave(
                connection, request.path, body, behaviour, draws, ordinal, attempt, extra
            )
        finally:
            if admitted:
                self._limiter.finished(scope)
            if connection.status_sent is not None:
                self.stats.by_status[connection.status_sent] += 1
            self.stats.request_finished(model)
            self._notify()

    async def _refuse(
        self, connection: HttpConnection, decision: Decision, extra: Headers, b: Behaviour
    ) -> None:
        refusal = decision.refusal
        assert refusal is not None
        self.stats.rate_limited[refusal.cause] += 1
        self._notify()
        headers = list(extra)
        if refusal.retry_after is not None:
            ms = max(1, whole_ms(refusal.retry_after))
            headers.append((b"retry-after", str(max(1, math.ceil(ms / 1000))).encode()))
            headers.append((b"retry-after-ms", str(ms).encode()))
        if b.should_retry is not None:
            headers.append((b"x-should-retry", b"true" if b.should_retry else b"false"))
        kind = "tokens" if refusal.cause == "tpm" else "requests"
        await self._send_error(connection, 429, refusal.message, kind=kind, extra=headers)

    def _attempt(self, request_id: str | None, body: object, behaviour: Behaviour) -> int:
        """Which attempt at this request this is: by its request id, else by its body."""
        if request_id is not None:
            return self.stats.by_request_id[request_id]
        if not behaviour.rate_limit_attempts:
            return 1  # unused; not counting keeps memory flat over long benchmark runs
        key = _bodies.digest(body)
        self._attempts[key] += 1
        return self._attempts[key]

    def _draw(self) -> float:
        if self.config.seed != self._seeded_with:
            self._seed()
        return self._rng.random()

    async def _behave(
        self,
        connection: HttpConnection,
        path: str,
        body: Any,
        b: Behaviour,
        draws: _Draws,
        ordinal: int,
        attempt: int,
        extra: Headers,
    ) -> None:
        if b.hold:  # first: every request counted in flight is already waiting when released
            await self._released.wait()
        delay = b.latency + b.latency_jitter * draws.jitter
        if delay > 0:
            await trio.sleep(delay)
        drip = b.slow_body
        if b.status is not None:
            self._fault("status")
            await self._send_error(
                connection, b.status, f"mock status {b.status}", b=b, drip=drip, extra=extra
            )
        elif draws.timeout < b.timeout_rate:
            self._fault("timeout")
            await connection.wait_closed()
            raise _Closed
        elif draws.reset < b.reset_rate:
            self._fault("reset")
            connection.abort()
            raise _Closed
        elif (
            ordinal <= b.rate_limit_first
            or attempt <= b.rate_limit_attempts
            or draws.rate_limit < b.rate_limit_rate
        ):
            self._fault("rate_limit")
            await self._send_error(
                connection, 429, "Rate limit reached (mock)", b=b, drip=drip, extra=extra
            )
        elif draws.error < b.error_rate:
            self._fault("error")
            await self._send_error(
                connection, 500, "mock internal error", b=b, drip=drip, extra=extra
            )
        elif draws.invalid < b.invalid_json_rate:
            self._fault("invalid_json")
            await self._send(connection, 200, JSON_HEADERS + extra, NOT_JSON, drip=drip)
        else:
            try:
                answer = _bodies.answer(path, body)
            except _bodies.BadRequest as exc:
                await self._send_error(
                    connection, 400, exc.message, param=exc.param, drip=drip, extra=extra
                )
            else:
                await self._send(connection, 200, JSON_HEADERS + extra, _json(answer), drip=drip)

    # --- sending ----------------------------------------------------------------------------

    async def _send_json(self, connection: HttpConnection, status: int, data: object) -> None:
        await self._send(connection, status, JSON_HEADERS, _json(data))

    async def _send_error(
        self,
        connection: HttpConnection,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        kind: str | None = None,
        b: Behaviour | None = None,
        drip: float = 0.0,
        extra: Headers | None = None,
    ) -> None:
        headers = JSON_HEADERS + (extra or [])
        if b is not None:
            headers += _fault_headers(status, b)
        envelope = _bodies.error_envelope(status, message, param=param, code=code, kind=kind)
        body = _json(envelope)
        await self._send(connection, status, headers, body, drip=drip)

    async def _send(
        self,
        connection: HttpConnection,
        status: int,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        *,
        drip: float = 0.0,
    ) -> None:
        await connection.send(status, headers, body, drip=drip)


def _limit_headers(decision: Decision) -> Headers:
    """OpenAI's ``x-ratelimit-*`` headers for the per-minute buckets that are limited."""
    headers: Headers = []
    quotas: tuple[tuple[str, Quota | None], ...] = (
        ("requests", decision.requests),
        ("tokens", decision.tokens),
    )
    for unit, quota in quotas:
        if quota is not None:
            headers += [
                (f"x-ratelimit-limit-{unit}".encode(), str(quota.limit).encode()),
                (f"x-ratelimit-remaining-{unit}".encode(), str(quota.remaining).encode()),
                (f"x-ratelimit-reset-{unit}".encode(), format_duration(quota.reset).encode()),
            ]
    return headers


def _fault_headers(status: int, b: Behaviour) -> list[tuple[bytes, bytes]]:
    headers: list[tuple[bytes, bytes]] = []
    if b.should_retry is not None:
        headers.append((b"x-should-retry", b"true" if b.should_retry else b"false"))
    if b.retry_after is not None and status in (429, 503):
        seconds = b.retry_after
        if b.retry_after_format in ("both", "seconds"):
            headers.append((b"retry-after", str(math.ceil(seconds)).encode()))
        if b.retry_after_format in ("both", "ms"):
            headers.append((b"retry-after-ms", str(round(seconds * 1000)).encode()))
        if b.retry_after_format == "date":
            date = formatdate(time.time() + seconds, usegmt=True)
            headers.append((b"retry-after", date.encode()))
    return headers


async def serve_mock_upstream(
    config: MockConfig | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    task_status: trio.TaskStatus[MockUpstream] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the mock upstream until cancelled; ``task_status.started(server)`` once listening.

    Args:
        config: the behaviour (a fresh ``MockConfig()`` when omitted); it stays live as
            ``server.config``.
        host, port: where to listen; port 0 picks a free port (``server.url`` says which).
            When ``host`` resolves to several addresses, ``url`` names the first.

    Example::

        async with trio.open_nursery() as nursery:
            server = await nursery.start(serve_mock_upstream, MockConfig())
            ...  # httpx against f"{server.url}/v1/chat/completions"
            nursery.cancel_scope.cancel()

    Raises:
        OSError: the address cannot be bound.
    """
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound_host, bound_port = listeners[0].socket.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    server = MockUpstream(
        config if config is not None else MockConfig(), f"http://{shown}:{bound_port}"
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, server.handle_connection, listeners)
        task_status.started(server)
