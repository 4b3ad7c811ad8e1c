"""What ``fusillade run`` checks before it stores anything: routing, keys, reachability.

Each check returns lines to print (one per problem), never raises for what it finds:
``run`` prints every problem and exits 2 when there is any, so a user fixes them all in
one go. ``routing_problems``: every model of the file has an upstream.
``key_warnings``: an upstream's key variable is unset (a warning: many local servers
take no key). ``reachability_problems``: one ``GET {base_url}/v1/models`` per upstream;
an answer other than 401/403 shows the server is there (a 404 or 405 from a server
without that route included), 401/403 says the key was refused, no answer names the
host and port that did not answer.
"""

from __future__ import annotations

from collections.abc import Iterable

import httpx
import trio

from fusillade._version import __version__
from fusillade.runtime.config import DaemonConfig, Upstream
from fusillade.runtime.dispatch import host_port, join_url

PREFLIGHT_TIMEOUT = 10.0  # seconds for the whole request: connect, send, answer
SKIP_HINT = "--no-preflight skips this check"
_SHOWN_MODELS = 3


def _flag_of(name: str) -> str:
    """How the user set upstream ``name``: ``--upstream`` makes ``default``."""
    return "--upstream" if name == "default" else f"[upstreams.{name}] base_url"


def _key_flag_of(name: str) -> str:
    return "--api-key-env" if name == "default" else f"[upstreams.{name}] api_key_env"


def routing_problems(config: DaemonConfig, models: Iterable[str]) -> list[str]:
    """One line when some models have no upstream (nothing could be sent for them)."""
    unrouted = sorted(m for m in set(models) if config.upstream_for(m) is None)
    if not unrouted:
        return []
    shown = ", ".join(repr(m) for m in unrouted[:_SHOWN_MODELS])
    if len(unrouted) > _SHOWN_MODELS:
        shown += f" and {len(unrouted) - _SHOWN_MODELS} more"
    return [
        f"no upstream for model {shown}: pass --upstream URL (the server's root, such as "
        f"http://127.0.0.1:8001), or route it in the configuration "
        f'([models."{unrouted[0]}"] upstream, or default_upstream)'
    ]


def _used(config: DaemonConfig, models: Iterable[str]) -> dict[str, Upstream]:
    """The upstreams the file's models go to, by name."""
    names = {config.upstream_name_for(m) for m in set(models)}
    return {n: config.upstreams[n] for n in sorted(n for n in names if n is not None)}


def key_warnings(config: DaemonConfig, models: Iterable[str]) -> list[str]:
    """A line per upstream whose key variable is unset or empty."""
    return [
        f"warning: ${u.api_key_env} is unset: requests to {_where(u.base_url)} go without an "
        f"api key (set it, or name another variable with {_key_flag_of(name)})"
        for name, u in _used(config, models).items()
        if u.api_key_env is not None and not u.api_key()
    ]


def _where(base_url: str) -> str:
    """``host:port`` of a URL, the port spelled out (what a refused connection concerns)."""
    try:
        url = httpx.URL(base_url)
    except httpx.InvalidURL:
        return base_url
    return host_port(url)


async def reachability_problems(
    config: DaemonConfig, models: Iterable[str], *, limit: float = PREFLIGHT_TIMEOUT
) -> list[str]:
    """A line per upstream of the file's models that does not answer or refuses the key."""
    problems: list[str] = []
    async with httpx.AsyncClient(trust_env=False, timeout=limit) as client:
        for name, upstream in _used(config, models).items():
            problem = await _check(client, name, upstream, limit)
            if problem is not None:
                problems.append(problem)
    return problems


async def _check(
    client: httpx.AsyncClient, name: str, upstream: Upstream, limit: float
) -> str | None:
    headers = {"user-agent": f"fusillade/{__version__}"}
    key = upstream.api_key()
    if key:
        headers["authorization"] = f"Bearer {key}"
    where = _where(upstream.base_url)
    try:
        with trio.fail_after(limit):
            response = await client.get(join_url(upstream.base_url, "/v1/models"), headers=headers)
    except (httpx.TimeoutException, trio.TooSlowError):
        reason = f"no answer within {limit:g}s"
    except httpx.TransportError as exc:
        reason = "connection refused" if _refused_connection(exc) else str(exc)
        reason = reason or type(exc).__name__
    else:
        if response.status_code in (401, 403):
            return _refused(name, upstream, where, response.status_code)
        return None
    return (
        f"upstream {where} is unreachable ({reason}): is the server running, and is "
        f"{_flag_of(name)} right? ({SKIP_HINT})"
    )


def _refused_connection(exc: BaseException) -> bool:
    """Whether a ``ConnectionRefusedError`` is behind ``exc`` (trio groups the errors of
    each address it tried)."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, ConnectionRefusedError):
            return True
        if isinstance(e, BaseExceptionGroup):
            todo.extend(e.exceptions)
        todo.extend(x for x in (e.__cause__, e.__context__) if x is not None)
    return False


def _refused(name: str, upstream: Upstream, where: str, status: int) -> str:
    if upstream.api_key_env is None:
        sent = f"no key is configured ({_key_flag_of(name)} names the variable holding it)"
    elif not upstream.api_key():
        sent = f"no key was sent: ${upstream.api_key_env} is unset"
    else:
        sent = f"set ${upstream.api_key_env} to a key it accepts"
    return f"upstream {where} refused the api key ({status}): {sent} ({SKIP_HINT})"
