"""The rate limits an answer reports in its headers.

Three header families are read (names case-insensitive; the first family with a usable
value wins, per limit):

- OpenAI: ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``; resets are Go
  durations (``1s``, ``6m0s``, ``20ms``, ``1h2m3.5s``) or plain seconds.
- Anthropic: ``anthropic-ratelimit-requests-{limit,remaining,reset}`` and
  ``anthropic-ratelimit-tokens-*`` (else ``anthropic-ratelimit-input-tokens-*``); resets
  are RFC 3339 timestamps, read as seconds after ``now``.
- IETF draft: ``RateLimit-Limit`` / ``RateLimit-Remaining`` / ``RateLimit-Reset``
  (seconds), and the structured ``RateLimit-Policy: "p";q=100;w=60`` with
  ``RateLimit: "p";r=50;t=30``. Both describe requests. The window ``w`` is not used:
  budgets are per minute, as most providers' policies are.

Parsing is total: garbage values are ignored, and nothing raises.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import datetime

import attrs


@attrs.frozen
class Window:
    """One provider limit as an answer reports it (any part may be missing)."""

    limit: int | None
    remaining: int | None
    reset_after: float | None
    """Seconds after the answer until the window is full again."""


@attrs.frozen
class ProviderLimits:
    requests: Window | None
    tokens: Window | None


_INT = re.compile(r"\s*([0-9]{1,15})\s*")
# IETF RateLimit-Limit may carry a policy after the number ("100, 100;w=60").
_LEADING_INT = re.compile(r"\s*([0-9]{1,15})\s*(?:[,;].*)?", re.DOTALL)
_SECONDS = re.compile(r"\s*([0-9]{1,12}(?:\.[0-9]{1,9})?)\s*")
_GO_PART = re.compile(r"([0-9]{1,12}(?:\.[0-9]{1,9})?)(h|ms|us|µs|ns|m|s)")
_GO_DURATION = re.compile(r"(?:[0-9]{1,12}(?:\.[0-9]{1,9})?(?:h|ms|us|µs|ns|m|s)){1,8}")
_GO_UNIT = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
# One member of a structured field list: a name (string or token), then ;key=value params.
_SF_PARAM = re.compile(r";\s*([a-z][a-z0-9_.*-]*)\s*=\s*([0-9]{1,15})")
_SF_NAME = re.compile(r'\s*(?:"([^"\\]*)"|([A-Za-z*][A-Za-z0-9_.:%*/-]*))')

_MAX_SECONDS = 366 * 86_400.0  # a reset further away than this is not a rate limit


def _int(value: str | None, *, leading: bool = False) -> int | None:
    if value is None:
        return None
    match = (_LEADING_INT if leading else _INT).fullmatch(value)
    return int(match.group(1)) if match else None


def _seconds(value: float) -> float | None:
    return value if math.isfinite(value) and 0.0 <= value <= _MAX_SECONDS else None


def go_duration(value: str | None) -> float | None:
    """``6m0s`` -> 360.0; plain numbers are seconds; None for anything else."""
    if value is None:
        return None
    text = value.strip()
    plain = _SECONDS.fullmatch(text)
    if plain:
        return _seconds(float(plain.group(1)))
    if not _GO_DURATION.fullmatch(text):
        return None
    total = sum(float(n) * _GO_UNIT[unit] for n, unit in _GO_PART.findall(text))
    return _seconds(total)


def _timestamp_after(value: str | None, now: datetime) -> float | None:
    if value is None:
        return None
    try:
        at = datetime.fromisoformat(value.strip())
        return _seconds(max(0.0, (at - now).total_seconds()))
    except (ValueError, TypeError, OverflowError):  # garbage, or naive against aware
        return None


def _window(limit: int | None, remaining: int | None, reset: float | None) -> Window | None:
    if limit is None and remaining is None and reset is None:
        return None
    return Window(limit=limit, remaining=remaining, reset_after=reset)


def _openai(h: Mapping[str, str], kind: str) -> Window | None:
    return _window(
        _int(h.get(f"x-ratelimit-limit-{kind}")),
        _int(h.get(f"x-ratelimit-remaining-{kind}")),
        go_duration(h.get(f"x-ratelimit-reset-{kind}")),
    )


def _anthropic(h: Mapping[str, str], kind: str, now: datetime) -> Window | None:
    prefix = f"anthropic-ratelimit-{kind}-"
    return _window(
        _int(h.get(prefix + "limit")),
        _int(h.get(prefix + "remaining")),
        _timestamp_after(h.get(prefix + "reset"), now),
    )


def _sf_members(value: str | None) -> list[tuple[str, dict[str, int]]]:
    """A structured-field list as (name, integer params); unreadable members skipped."""
    if value is None:
        return []
    members = []
    for part in value.split(","):
        name = _SF_NAME.match(part)
        if not name:
            continue
        params = dict(_SF_PARAM.findall(part[name.end() :]))
        members.append(
            (name.group(1) or name.group(2) or "", {k: int(v) for k, v in params.items()})
        )
    return members


def _ietf(h: Mapping[str, str]) -> Window | None:
    plain = _window(
        _int(h.get("ratelimit-limit"), leading=True),
        _int(h.get("ratelimit-remaining"), leading=True),
        _seconds(float(r))
        if (r := _int(h.get("ratelimit-reset"), leading=True)) is not None
        else None,
    )
    if plain is not None:
        return plain
    policies = [(n, p["q"]) for n, p in _sf_members(h.get("ratelimit-policy")) if "q" in p]
    current = [(n, p) for n, p in _sf_members(h.get("ratelimit")) if "r" in p or "t" in p]
    if not policies and not current:
        return None
    name, params = current[0] if current else ("", {})
    quotas = dict(policies)
    limit = quotas.get(name, policies[0][1] if policies else None)
    reset = params.get("t")
    return _window(limit, params.get("r"), _seconds(float(reset)) if reset is not None else None)


# every header name read below starts with one of these
_PREFIXES = ("x-ratelimit-", "anthropic-ratelimit-", "ratelimit")


def parse_limits(headers: Mapping[str, str], *, now: datetime) -> ProviderLimits | None:
    """The request and token limits an answer's headers report; None if none is readable.

    ``now`` is when the answer arrived (wall clock, for Anthropic's absolute resets).
    Never raises: a value that cannot be read is left out.
    """
    try:
        h = {str(k).lower(): str(v) for k, v in headers.items()}
    except Exception:  # an exotic mapping; the contract is to never raise
        return None
    # most answers carry none of these: one pass over the names, then nothing else
    if not any(k.startswith(_PREFIXES) for k in h):
        return None
    requests = _openai(h, "requests") or _anthropic(h, "requests", now) or _ietf(h)
    tokens = (
        _openai(h, "tokens") or _anthropic(h, "tokens", now) or _anthropic(h, "input-tokens", now)
    )
    if requests is None and tokens is None:
        return None
    return ProviderLimits(requests=requests, tokens=tokens)
