"""Shared helpers for tests that run batches through a real repository and daemon, and a
server in a thread of its own for the blocking clients of the fuzzers."""

from __future__ import annotations

import inspect
import json
import queue
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from uuid import UUID

import attrs
import trio

from fusillade.config import ApiKey, ServerSettings, Settings, UpstreamSettings
from fusillade.core.attempts import ClaimedRequest
from fusillade.core.models import BatchStatus, BatchView, RequestTemplate
from fusillade.core.results import ResultLine
from fusillade.core.retry import RetryPolicy
from fusillade.mock_upstream import MockConfig, MockUpstream, serve_mock_upstream
from fusillade.runtime.config import DaemonConfig, Upstream
from fusillade.store.interface import BatchSpec, Repository

OWNER = "alice"
T = TypeVar("T")


def now() -> datetime:
    return datetime.now(UTC)


def chat_body(i: int = 0, model: str = "m") -> str:
    """A chat completion body the mock upstream accepts."""
    return json.dumps({"model": model, "messages": [{"role": "user", "content": f"hi {i}"}]})


def daemon_config(server: MockUpstream, **overrides: Any) -> DaemonConfig:
    """Every model to ``server``, with intervals short enough for tests."""
    settings: dict[str, Any] = {
        # slow start off: these tests count requests in flight before any answer
        "upstreams": {"mock": Upstream(server.url, api_key_env="MOCK_KEY", slow_start=False)},
        "default_upstream": "mock",
        "poll_interval": 0.2,
        "heartbeat_interval": 0.5,
        "maintenance_interval": 0.3,
        "cancel_check_interval": 0.1,
        "retry": RetryPolicy(base=timedelta(milliseconds=50), cap=timedelta(milliseconds=200)),
    }
    settings.update(overrides)
    return DaemonConfig(**settings)


async def make_batch(
    repo: Repository,
    models: Sequence[str] | int,
    *,
    window: timedelta = timedelta(hours=24),
) -> UUID:
    """A batch of one request per entry of ``models`` (an int: that many of model "m")."""
    names = ["m"] * models if isinstance(models, int) else list(models)

    def create() -> UUID:
        templates = (
            RequestTemplate(f"c{i}", model, chat_body(i, model)) for i, model in enumerate(names)
        )
        stored = repo.create_file(OWNER, "in.jsonl", templates, now=now())
        label = f"{int(window.total_seconds())}s"
        spec = BatchSpec(stored.id, "/v1/chat/completions", label, window)
        return repo.create_batch(OWNER, spec, now=now()).record.id

    return await trio.to_thread.run_sync(create)


async def view_of(repo: Repository, batch: UUID) -> BatchView:
    return await trio.to_thread.run_sync(lambda: repo.get_batch(OWNER, batch, now=now()))


async def poll_until(
    probe: Callable[[], Awaitable[T] | T],
    until: Callable[[T], object] = bool,
    *,
    timeout: float = 30,
    interval: float = 0.05,
) -> T:
    """Call ``probe`` (awaiting what it returns, if awaitable) until ``until`` holds for
    its value, and return that value; fail with ``trio.TooSlowError`` after ``timeout``.

    For state that has no event to wait on (rows in the database, another process's
    answers, a counter of the daemon's). The pause between probes is the polling
    interval of a bounded wait, never a wait by itself: the one such pause in the tests.
    """
    with trio.fail_after(timeout):
        while True:
            value = probe()
            if inspect.isawaitable(value):
                value = await value
            if until(value):  # type: ignore[arg-type]
                return value  # type: ignore[return-value]
            await trio.sleep(interval)


async def wait_status(
    repo: Repository, batch: UUID, *statuses: BatchStatus, timeout: float = 30
) -> BatchView:
    """Poll until the batch has one of ``statuses`` (any terminal one when none given)."""
    return await poll_until(
        lambda: view_of(repo, batch),
        lambda v: v.status in statuses or (not statuses and v.status.is_terminal),
        timeout=timeout,
    )


async def result_lines(repo: Repository, batch: UUID, *, errors: bool = False) -> list[ResultLine]:
    return await trio.to_thread.run_sync(
        lambda: list(repo.iter_results(OWNER, batch, errors=errors))
    )


@contextmanager
def server_in_thread(
    database_url: str, key_env: str, *, upstream_key_env: str | None = None
) -> Iterator[str]:
    """The server (with a daemon) and a mock upstream in a thread of their own, for
    blocking clients such as schemathesis; the key in ``key_env`` belongs to owner
    ``fuzz``. Yields the server's URL."""
    from fusillade.server.serve import Running, serve

    started: queue.Queue[tuple[str, trio.lowlevel.TrioToken, trio.CancelScope] | BaseException]
    started = queue.Queue()
    failure: list[BaseException] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            upstream = await nursery.start(serve_mock_upstream, MockConfig())
            settings = Settings(
                database_url=database_url,
                server=ServerSettings(
                    host="127.0.0.1",
                    port=0,
                    api_keys=(ApiKey(key_env, "fuzz"),),
                    max_upload_bytes=256 * 1024,
                ),
                upstreams={"mock": UpstreamSettings(upstream.url, api_key_env=upstream_key_env)},
                default_upstream="mock",
            )
            config = attrs.evolve(settings.daemon_config(), poll_interval=0.1)

            async def run(task_status: trio.TaskStatus[Running]) -> None:
                await serve(settings, daemon_config=config, migrate=False, task_status=task_status)

            running: Running = await nursery.start(run)
            assert running.url is not None
            started.put((running.url, trio.lowlevel.current_trio_token(), nursery.cancel_scope))

    def thread() -> None:
        try:
            trio.run(main)
        except BaseException as exc:
            failure.append(exc)
            started.put(exc)

    worker = threading.Thread(target=thread, name="fusillade-server", daemon=True)
    worker.start()
    item = started.get(timeout=60)
    if isinstance(item, BaseException):
        raise item
    url, token, scope = item
    try:
        yield url
    finally:
        trio.from_thread.run_sync(scope.cancel, trio_token=token)
        worker.join(timeout=60)
        assert not worker.is_alive()
    if failure:
        raise failure[0]


def claim_by_model(
    repo: Repository, daemon_id: UUID, slots: Mapping[str, int], *, now: datetime
) -> list[ClaimedRequest]:
    """Up to ``slots[model]`` due requests per model, earliest deadline first, then oldest
    batch, then line: what the claim took before it took allotments. Written here, not
    taken from the daemon's allocator: per model, each claimable batch in turn is asked
    for all the slots still wanted (one claim per batch, so not one transaction)."""
    out: list[ClaimedRequest] = []
    batches = repo.claimable_batches(now=now)
    for model, n in slots.items():
        for b in batches:
            if n <= 0:
                break
            if model in b.models:
                got = repo.claim(daemon_id, [(b.id, model, n)], now=now)
                out += got
                n -= len(got)
    return out


SUITE_VARIABLES = ("FUSILLADE_DAEMON_WORKERS", "FUSILLADE_DAEMON_SENDER")
"""Settings the whole suite runs under (``FUSILLADE_DAEMON_WORKERS=1 pytest``: the commands
the tests start use one daemon process; ``FUSILLADE_DAEMON_SENDER=httptools``: they send
with the httptools sender): kept when a test clears the ``FUSILLADE_*`` variables of the
environment it starts a command in."""


def is_setting(name: str) -> bool:
    """A ``FUSILLADE_*`` variable a test clears before starting a command (not the
    suite's own, ``SUITE_VARIABLES``)."""
    return name.startswith("FUSILLADE_") and name not in SUITE_VARIABLES
