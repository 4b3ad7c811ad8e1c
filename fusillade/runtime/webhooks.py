"""Webhook delivery: the daemon's loop that sends the outbox's events (docs/webhooks.md).

Theory of operation
-------------------
The freeze that makes a batch terminal writes its event to ``webhook_events`` in the
same transaction, for every owner. Every daemon with a webhook configured for an owner
claims that owner's due events (``claim_webhook_events``: ``FOR UPDATE SKIP LOCKED``,
one attempt counted, the row leased to this daemon for twice the send's time limit, at
most 30 s more), so any daemon delivers and two never send one event at once. A daemon
killed mid-send leaves the row due again when its lease ends: delivery is at least
once, always under the same event id (``webhook-id``) and body.

One send: the URL's host is resolved now, every address checked
(``core.webhooks.address_refusal``, unless ``webhook_allow_private``), and the request
goes to the checked address itself (the URL's host kept in the ``Host`` header and as
the TLS server name), so a name cannot resolve to a public address for the check and a
private one for the connection. No redirects, no proxies from the environment, no
kept-alive connections (one per send: each is checked for its own host name); at most
``webhook_timeout`` in all (5 s to connect). A 2xx answer delivers; anything else (an
answer, a timeout, a refused connection, a refused address) is tried again with
backoff (``core.webhooks.next_attempt``) until 72 hours after the event, then given up.
"""

from __future__ import annotations

import ipaddress
import socket
from datetime import datetime, timedelta
from urllib.parse import urlsplit, urlunsplit

import anyio
import httpx

from fusillade import metrics
from fusillade.core.ids import format_id
from fusillade.core.webhooks import (
    IPAddress,
    SecretError,
    WebhookEvent,
    address_refusal,
    next_attempt,
    parse_secrets,
    payload,
    signed_headers,
)
from fusillade.errors import StoreError
from fusillade.runtime._base import DaemonBase, log
from fusillade.runtime.config import Webhook

_CONCURRENCY = 8  # events sent at once by one daemon
_CONNECT_TIMEOUT = 5.0
_LEASE_MARGIN = timedelta(seconds=30)


class DeliveryFailed(Exception):
    """One send did not deliver; the message says why (no secret, no body)."""


class WebhookSender(DaemonBase):
    def _webhook_lease(self) -> timedelta:
        timeout = self.config.webhook_timeout
        return timeout + min(timeout, _LEASE_MARGIN)

    async def _webhook_loop(self) -> None:
        owners = sorted(self.config.webhooks)
        if not owners:
            return
        interval = self.config.poll_interval.total_seconds()
        limiter = anyio.CapacityLimiter(_CONCURRENCY)
        # the pending gauge is read once per maintenance interval
        gauge_every = self.config.maintenance_interval.total_seconds()
        gauge_at = -gauge_every
        async with (
            # no keep-alive: a pooled connection is keyed by the address alone, and one
            # opened (and its certificate checked) for one host name must not carry
            # another's event; webhook volume is low
            httpx.AsyncClient(
                follow_redirects=False,
                trust_env=False,
                limits=httpx.Limits(max_keepalive_connections=0),
            ) as client,
            anyio.create_task_group() as sends,
        ):
            while True:
                if anyio.current_time() - gauge_at >= gauge_every:
                    gauge_at = anyio.current_time()
                    await self._publish_outbox_gauge(owners)
                free = int(limiter.available_tokens)
                events: list[WebhookEvent] = []
                if free:
                    try:
                        now = self.now()
                        events = await self._db(
                            self.repo.sync.claim_webhook_events,
                            self.id,
                            owners,
                            now=now,
                            lease_until=now + self._webhook_lease(),
                            limit=free,
                        )
                    except (StoreError, TimeoutError) as exc:
                        metrics.DB_ERRORS.labels("webhooks").inc()
                        log.warning("webhooks: database call failed: %s", exc)
                for event in events:
                    await limiter.acquire_on_behalf_of(event.id)
                    sends.start_soon(self._deliver_and_release, client, limiter, event)
                if len(events) < free or not free:
                    await anyio.sleep(interval)

    async def _publish_outbox_gauge(self, owners: list[str]) -> None:
        try:
            pending = await self._db(self.repo.sync.webhook_outbox_pending, owners)
        except (StoreError, TimeoutError) as exc:
            metrics.DB_ERRORS.labels("webhooks").inc()
            log.warning("webhooks: database call failed: %s", exc)
            return
        metrics.WEBHOOK_OUTBOX_PENDING.set(pending)

    async def _deliver_and_release(
        self, client: httpx.AsyncClient, limiter: anyio.CapacityLimiter, event: WebhookEvent
    ) -> None:
        try:
            await self._deliver(client, event)
        finally:
            limiter.release_on_behalf_of(event.id)

    async def _deliver(self, client: httpx.AsyncClient, event: WebhookEvent) -> None:
        """Send one claimed event and record what came of it."""
        hook = self.config.webhooks.get(event.owner)
        name = format_id("event", event.id)
        if hook is None or not hook.wants(event.type):
            await self._settle_event(event, given_up=True, error="event type not subscribed")
            return
        try:
            status = await send_event(
                client,
                hook,
                event,
                timestamp=int(self.now().timestamp()),
                limit=self.config.webhook_timeout.total_seconds(),
                allow_private=self.config.webhook_allow_private,
            )
        except DeliveryFailed as exc:
            error = str(exc)
        else:
            if 200 <= status < 300:
                if await self._settle_event(event, delivered=True):
                    metrics.WEBHOOK_DELIVERIES.labels("delivered").inc()
                    log.debug(
                        "webhook %s (%s) delivered, attempt %d", name, event.type, event.attempts
                    )
                return
            error = f"answered HTTP {status}"
        now = self.now()
        again = next_attempt(self.config.webhook_policy, event, now, self._jitter())
        if again is None:
            if await self._settle_event(event, given_up=True, error=error):
                metrics.WEBHOOK_DELIVERIES.labels("given_up").inc()
                log.warning(
                    "webhook %s (%s) for owner %r given up after %d attempts: %s",
                    name,
                    event.type,
                    event.owner,
                    event.attempts,
                    error,
                )
            return
        if await self._settle_event(event, next_attempt_at=again, error=error):
            metrics.WEBHOOK_DELIVERIES.labels("failed").inc()
            # one line when an event first fails; the rest at debug (the metric counts them)
            level = log.warning if event.attempts == 1 else log.debug
            level(
                "webhook %s (%s) for owner %r not delivered (attempt %d, next in %.0fs): %s",
                name,
                event.type,
                event.owner,
                event.attempts,
                (again - now).total_seconds(),
                error,
            )

    async def _settle_event(
        self,
        event: WebhookEvent,
        *,
        delivered: bool = False,
        given_up: bool = False,
        next_attempt_at: datetime | None = None,
        error: str | None = None,
    ) -> bool:
        now = self.now()
        try:
            return await self._db(
                self.repo.sync.settle_webhook_event,
                self.id,
                event,
                delivered_at=now if delivered else None,
                given_up_at=now if given_up else None,
                next_attempt_at=next_attempt_at,
                error=error,
            )
        except (StoreError, TimeoutError) as exc:
            # the lease runs out and the event is sent again: at least once
            metrics.DB_ERRORS.labels("webhooks").inc()
            log.warning("webhooks: database call failed: %s", exc)
            return False


async def send_event(
    client: httpx.AsyncClient,
    hook: Webhook,
    event: WebhookEvent,
    *,
    timestamp: int,
    limit: float,
    allow_private: bool,
) -> int:
    """POST ``event`` to ``hook`` signed at ``timestamp``, within ``limit`` seconds in all;
    the answer's status.

    Raises:
        DeliveryFailed: no usable secret, the target refused (SSRF) or unresolvable, a
            transport error, or no answer in time.
    """
    secret = hook.secret()
    if secret is None:
        raise DeliveryFailed(f"the variable {hook.secret_env} (secret_env) is not set")
    try:
        keys = parse_secrets(secret)
    except SecretError as exc:
        raise DeliveryFailed(f"the variable {hook.secret_env} (secret_env): {exc}") from None
    body = payload(event)
    headers = signed_headers(keys, event, timestamp, body)
    try:
        with anyio.fail_after(limit):
            url, host_header, sni = await _pinned_target(hook.url, allow_private)
            headers["host"] = host_header
            extensions = {"sni_hostname": sni} if sni else {}
            request = client.build_request(
                "POST",
                url,
                content=body,
                headers=headers,
                extensions=extensions,
                timeout=httpx.Timeout(limit, connect=min(limit, _CONNECT_TIMEOUT)),
            )
            response = await client.send(request, stream=True)
            await response.aclose()  # the body is never read: only the status counts
            return response.status_code
    except TimeoutError:
        raise DeliveryFailed(f"no answer within {limit:g}s") from None
    except httpx.TimeoutException:
        raise DeliveryFailed(f"no answer within {limit:g}s") from None
    except httpx.HTTPError as exc:
        raise DeliveryFailed(f"{type(exc).__name__}") from None


async def _pinned_target(url: str, allow_private: bool) -> tuple[str, str, str | None]:
    """``url`` with its host replaced by a checked address it resolves to now, the
    ``Host`` header to send, and the TLS server name (https only).

    Raises:
        DeliveryFailed: the name does not resolve, or an address it resolves to is
            refused (any one: a name that also points inside is not sent to).
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    addresses = await resolve(host, port)
    if not addresses:
        raise DeliveryFailed(f"{host} does not resolve")
    if not allow_private:
        for address in addresses:
            if (reason := address_refusal(address)) is not None:
                raise DeliveryFailed(
                    f"refused: {host}: {reason} (allow with webhook_allow_private)"
                )
    chosen = addresses[0]
    literal = f"[{chosen}]" if chosen.version == 6 else str(chosen)
    netloc = f"{literal}:{port}"
    pinned = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
    host_header = parts.netloc.rpartition("@")[2]  # never the userinfo
    return pinned, host_header, host if parts.scheme == "https" else None


async def resolve(host: str, port: int) -> list[IPAddress]:
    """The addresses ``host`` names now (an address literal: itself), in resolver order.

    Raises:
        DeliveryFailed: the name does not resolve.
    """
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        raise DeliveryFailed(f"{host} does not resolve") from None
    found: list[IPAddress] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).partition("%")[0])
        if address not in found:
            found.append(address)
    return found
