"""Bearer keys: which owner a request acts for.

Keys are configured by the name of the environment variable holding each
(``[server] api_keys = [{key_env, owner}]``) and read once at start-up. A request's key is
compared with every configured key in constant time (``hmac.compare_digest`` on
SHA-256 digests, all keys compared whatever matched), so neither timing nor the answer
tells how much of a key was right. No keys configured: every request acts for owner
``"default"`` and the server refuses to listen beyond loopback (see ``check_bind``).

``GET /metrics`` has a key of its own (``[server] metrics_key_env``, ``load_metrics_key``):
metrics count every owner's work, so an owner's key does not open them, and the key a
scraper holds opens nothing else. Unset: ``/metrics`` needs no key.

Loopback alone does not keep browsers out: any web page can make the browser send a
request to ``127.0.0.1``, and with DNS rebinding read the answer. So without keys
``HostPolicy`` checks the ``Host`` header (a rebinding page's requests carry the
attacker's name) and the ``Origin`` header (a cross-origin page's requests carry its
own); see docs/deployment.md, "Browsers".
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit

import attrs

from fusillade.config import ApiKey, ServerSettings
from fusillade.errors import ConfigError
from fusillade.server.errors import Refused, Unauthorized

DEFAULT_OWNER = "default"
# Headers a reverse proxy adds: behind one on this machine every client's address is
# loopback, so a request carrying them is not taken for a local one.
_FORWARDING_HEADERS = ("forwarded", "x-forwarded-for", "x-real-ip")
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


@attrs.frozen
class KeyRing:
    """Digests of the accepted keys and their owners; empty means "no auth"."""

    entries: tuple[tuple[bytes, str], ...] = attrs.field(repr=False)

    @property
    def enabled(self) -> bool:
        return bool(self.entries)

    def owner_for(self, authorization: str | None) -> str:
        """The owner of the request's ``Authorization`` header value.

        Raises:
            Unauthorized: keys are configured and the header is missing, not a bearer
                key, or matches none.
        """
        if not self.entries:
            return DEFAULT_OWNER
        if not authorization:
            raise Unauthorized(
                "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.",
                code="missing_api_key",
            )
        scheme, _, key = authorization.strip().partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise Unauthorized(
                "Malformed Authorization header: expected 'Bearer <key>'.",
                code="invalid_api_key",
            )
        digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()
        found: str | None = None
        for known, owner in self.entries:
            if hmac.compare_digest(digest, known) and found is None:
                found = owner
        if found is None:
            raise Unauthorized("Incorrect API key provided.", code="invalid_api_key")
        return found


def load_keys(keys: Sequence[ApiKey], environ: Mapping[str, str] | None = None) -> KeyRing:
    """Read each key's value from its environment variable.

    Raises:
        ConfigError: a variable is unset or empty, or two entries hold the same key.
    """
    env = os.environ if environ is None else environ
    entries: list[tuple[bytes, str]] = []
    for key in keys:
        value = env.get(key.key_env)
        if not value:
            raise ConfigError(
                f"server.api_keys: environment variable {key.key_env} (key of owner "
                f"{key.owner!r}) is not set"
            )
        digest = hashlib.sha256(value.encode("utf-8", "surrogateescape")).digest()
        if any(hmac.compare_digest(digest, d) for d, _ in entries):
            raise ConfigError(f"server.api_keys: {key.key_env} holds the same key as another entry")
        entries.append((digest, key.owner))
    return KeyRing(tuple(entries))


METRICS_OWNER = "metrics"
"""The owner ``KeyRing.owner_for`` answers for the metrics key (it owns no data)."""


def load_metrics_key(
    key_env: str | None, api_keys: KeyRing, environ: Mapping[str, str] | None = None
) -> KeyRing:
    """The key ``GET /metrics`` requires, read from ``key_env``; empty when ``None``.

    Raises:
        ConfigError: the variable is unset or empty, or holds one of ``api_keys``.
    """
    if key_env is None:
        return KeyRing(())
    env = os.environ if environ is None else environ
    value = env.get(key_env)
    if not value:
        raise ConfigError(f"server.metrics_key_env: environment variable {key_env} is not set")
    digest = hashlib.sha256(value.encode("utf-8", "surrogateescape")).digest()
    if any(hmac.compare_digest(digest, d) for d, _ in api_keys.entries):
        raise ConfigError(
            f"server.metrics_key_env: {key_env} holds the same key as an entry of api_keys "
            "(the metrics key must open /metrics only)"
        )
    return KeyRing(((digest, METRICS_OWNER),))


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (``127.0.0.0/8``, ``::1``)."""
    name = host.strip("[]").lower()
    if name in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def is_local_request(client: str | None, headers: Mapping[str, str]) -> bool:
    """True for a request from this machine to this machine: sent from a loopback address,
    without a proxy's forwarding headers, to a loopback ``Host``, and without an
    ``Origin`` of another host.

    A request addressed to another name (DNS rebinding: the page's own name) or sent by
    another page is not local, though the browser sending it runs here.
    """
    if client is None or not is_loopback(client):
        return False
    if any(name in headers for name in _FORWARDING_HEADERS):
        return False
    host = headers.get("host")
    ours = _authority(host) if host is not None else None
    if ours is None or not is_loopback(ours[0]):
        return False
    origin = headers.get("origin")
    return origin is None or _origin_authority(origin) == ours


def check_bind(host: str, keys: KeyRing) -> None:
    """Refuse to listen beyond loopback without keys.

    Raises:
        ConfigError: no api keys are configured and ``host`` is not a loopback address.
    """
    if not keys.enabled and not is_loopback(host):
        raise ConfigError(
            f"refusing to listen on {host}: no api keys are configured ([server] api_keys), "
            "so the API would be open to anyone; configure keys or listen on 127.0.0.1"
        )


def _authority(value: str) -> tuple[str, str | None] | None:
    """``(name, port)`` of a ``Host`` header value (or allowed-hosts entry), normalised:
    lower case, no brackets, no trailing dot; ``None`` when it is not ``name[:port]``."""
    value = value.strip().lower()
    if value.startswith("["):
        name, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return None
        port = rest[1:] if rest else None
    else:
        name, colon, port_text = value.rpartition(":")
        if not colon:
            name, port = value, None
        elif ":" in name:
            return None  # an IPv6 address must be bracketed
        else:
            port = port_text
    if port is not None and not (port.isdigit() and len(port) <= 5):
        return None
    name = name.rstrip(".")
    return (name, port) if name else None


def _origin_authority(origin: str) -> tuple[str, str | None] | None:
    """``(name, port)`` of an ``Origin`` header value; ``None`` for ``null`` or junk."""
    parts = urlsplit(origin.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    return _authority(parts.netloc)


@attrs.frozen
class HostPolicy:
    """Which ``Host`` and ``Origin`` headers a request may carry.

    When ``enforced`` (no api keys, or ``[server] allowed_hosts`` set): the ``Host`` name
    must be a loopback name or address, the configured ``host``, or match an
    ``allowed_hosts`` entry (``name``: any port; ``name:port``: that port; ``*``:
    anything, the check is off). An ``Origin`` header, when sent, must name the same host
    and port as ``Host`` (a page the server itself served: the status page) or match an
    entry. A request without ``Host`` passes: browsers always send one.
    """

    enforced: bool
    own: str | None
    """The name of the configured ``host``."""
    names: frozenset[str]
    """``allowed_hosts`` entries without a port."""
    authorities: frozenset[tuple[str, str | None]]
    """``allowed_hosts`` entries with a port, as ``(name, port)``."""
    anything: bool = False

    @classmethod
    def from_settings(cls, settings: ServerSettings, keys: KeyRing) -> HostPolicy:
        own = _authority(settings.host)
        entries = [e for e in map(_authority, settings.allowed_hosts) if e is not None]
        return cls(
            enforced=not keys.enabled or bool(settings.allowed_hosts),
            own=own[0] if own is not None else None,
            names=frozenset(name for name, port in entries if port is None),
            authorities=frozenset(e for e in entries if e[1] is not None),
            anything="*" in settings.allowed_hosts,
        )

    def _listed(self, authority: tuple[str, str | None]) -> bool:
        return authority[0] in self.names or authority in self.authorities

    def check(self, host: str | None, origin: str | None) -> None:
        """Raises ``Refused`` (403) for a ``Host`` or ``Origin`` the policy refuses."""
        if not self.enforced or self.anything:
            return
        ours = _authority(host) if host is not None else None
        if host is not None and (
            ours is None or not (is_loopback(ours[0]) or ours[0] == self.own or self._listed(ours))
        ):
            raise Refused(
                403,
                "host_not_allowed",
                f"Host {host[:100]!r} is not allowed: this server answers requests addressed "
                "to a loopback name, its own host or a name in [server] allowed_hosts",
            )
        if origin is not None:
            theirs = _origin_authority(origin)
            if theirs is None or (theirs != ours and not self._listed(theirs)):
                raise Refused(
                    403,
                    "origin_not_allowed",
                    f"requests from the web page {origin[:100]!r} are not allowed: a page "
                    "could send them from any site the browser shows (list its host in "
                    "[server] allowed_hosts to allow it)",
                )
