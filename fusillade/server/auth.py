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
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
from collections.abc import Mapping, Sequence

import attrs

from fusillade.config import ApiKey
from fusillade.errors import ConfigError
from fusillade.server.errors import Unauthorized

DEFAULT_OWNER = "default"
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
