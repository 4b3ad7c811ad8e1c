"""Worker processes: more daemons on the same database, so ``run`` and ``serve`` use
every core (``[daemon] workers``, ``--workers N``; docs/deployment.md, "Workers").

Theory of operation
-------------------
The parent process keeps its role (``run``: the batch, the progress line, the output;
``serve``: the HTTP API) and runs a daemon of its own; ``open_workers`` starts the other
``N - 1`` daemons, each a ``python -m fusillade.server.workers`` process on the same
database, exactly as separate daemons already share one (claims, reclaims, budget
leases). Per-daemon limits are split so the deployment keeps its configured ones
(``share_of``): the per-model concurrency, and through it the default ``max_in_flight``;
configured ``max_in_flight``/``rpm``/``tpm`` budgets are the deployment's already (leased
in PostgreSQL).

The parent talks to a worker over its standard input and output. It writes the worker's
settings first (a length-prefixed pickle); after that, a byte ``m`` asks for the
worker's metrics, ``n`` and a batch id for what its daemon does for that batch now
(``DaemonNow``; each answered length-prefixed on its standard output), and **end of file
stops the worker gracefully** (what its in-flight requests get: ``shutdown_grace``).
The kernel closes the pipe when the parent dies however it dies (SIGKILL too), so a
worker never outlives its parent for long: a graceful stop still running ``_KILL_AFTER``
seconds past the grace (the database gone meanwhile) becomes an immediate one. A SIGTERM
also stops a worker gracefully; a second one (or one after end of file) stops it at
once, handing its rows back. Workers ignore SIGINT: Ctrl-C goes to the whole process
group, and the parent decides what it means.

A worker that exits unexpectedly is reported in one line and not restarted: the other
daemons carry on, and its requests go back to the queue after ``stale_after``.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import struct
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any
from uuid import UUID

import attrs
import trio

from fusillade.runtime.config import DaemonConfig

if TYPE_CHECKING:
    from fusillade.engine import Engine
    from fusillade.runtime.daemon import Daemon

_HEADER = struct.Struct(">Q")
_METRICS = b"m"
_NOW = b"n"  # then a batch id's 16 bytes: the worker's ``DaemonNow`` of that batch
_ANSWER_TIMEOUT = 2.0  # seconds a worker has to answer a request of the parent
_KILL_AFTER = 15.0  # seconds past shutdown_grace before a worker that will not stop is killed


DEFAULT_MAX_WORKERS = 8
"""The default's ceiling: each daemon process holds up to 9 PostgreSQL connections, and
PostgreSQL allows 100 by default (the embedded one too); more takes a setting."""


def worker_count(configured: int | None) -> int:
    """``[daemon] workers``, else one daemon per core this process may run on (at most
    ``DEFAULT_MAX_WORKERS``)."""
    if configured is not None:
        return configured
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(min(cores, DEFAULT_MAX_WORKERS), 1)


def _part(limit: int, index: int, count: int) -> int:
    """Daemon ``index``'s part of ``limit`` split over ``count``: the parts sum to
    ``limit``; with fewer slots than daemons the last daemons get none (they leave that
    model to the others)."""
    return limit // count + (1 if index < limit % count else 0)


def share_of(config: DaemonConfig, index: int, count: int) -> DaemonConfig:
    """The configuration of daemon ``index`` of ``count`` of one deployment: its part
    of every per-daemon concurrency limit."""
    if count <= 1:
        return config
    return attrs.evolve(
        config,
        default_concurrency=_part(config.default_concurrency, index, count),
        model_concurrency={
            m: _part(limit, index, count) for m, limit in config.model_concurrency.items()
        },
    )


@attrs.frozen
class DaemonNow:
    """What one daemon does for a batch now, for ``run``'s progress line."""

    in_flight: int  # the batch's requests sent and not yet answered
    throttled: tuple[str, ...]  # why the budgets hold requests back ("rpm"...)
    paused: Mapping[str, float]  # models paused after a 429: seconds left

    @classmethod
    def of(cls, daemon: Daemon, batch_id: UUID) -> DaemonNow:
        stats = daemon.statistics()
        now = trio.current_time()
        paused = {m.model: m.paused_until - now for m in stats.models if m.paused_until is not None}
        return cls(daemon.in_flight_of(batch_id), stats.throttled, paused)

    def to_json(self) -> bytes:
        return json.dumps(attrs.asdict(self)).encode()

    @classmethod
    def from_json(cls, data: bytes) -> DaemonNow:
        fields = json.loads(data)
        return cls(fields["in_flight"], tuple(fields["throttled"]), fields["paused"])


@attrs.frozen
class WorkerSpec:
    """What a worker process is told at start."""

    database_url: str
    config: DaemonConfig
    log_level: str
    log_format: str


@attrs.define
class _Worker:
    process: trio.Process
    lock: trio.Lock = attrs.field(factory=trio.Lock)
    answering: bool = True  # False once it failed to answer a metrics request

    @property
    def pid(self) -> int:
        return self.process.pid


class Workers:
    """The worker processes of this deployment (``open_workers``).

    A plain class: the server's context holds it, and Litestar reads the annotations of
    attrs classes reachable from there (trio's own would not resolve)."""

    def __init__(self, count: int) -> None:
        self.count = count  # daemons in all, this process's included
        self._workers: list[_Worker] = []
        self._closing = False

    @property
    def pids(self) -> list[int]:
        """The running workers' process ids."""
        return [w.pid for w in self._workers if w.process.returncode is None]

    async def metrics(self) -> list[bytes]:
        """Each running worker's metrics exposition (one that does not answer in time
        is left out from then on)."""
        answers, _ = await self._ask_each(_METRICS)
        return answers

    async def now_of(self, batch_id: UUID) -> tuple[list[DaemonNow], bool]:
        """What each running worker's daemon does for the batch now, and whether every
        one answered."""
        answers, complete = await self._ask_each(_NOW + batch_id.bytes)
        return [DaemonNow.from_json(a) for a in answers], complete

    async def _ask_each(self, request: bytes) -> tuple[list[bytes], bool]:
        """Each running worker's answer to ``request``, and whether every one answered
        (one that did not answer in time is not asked again)."""
        out, complete = [], True
        for worker in self._workers:
            if worker.process.returncode is not None:
                continue
            async with worker.lock:
                if worker.answering:
                    with trio.move_on_after(_ANSWER_TIMEOUT):
                        try:
                            out.append(await _ask(worker.process, request))
                            continue
                        except (trio.BrokenResourceError, trio.ClosedResourceError):
                            pass  # it is exiting
                worker.answering = False
                complete = False
        return out, complete


def merge_metrics(expositions: list[bytes]) -> bytes:
    """One Prometheus exposition adding up several processes' ones: counters, gauges
    and histogram buckets are summed by name and labels (a gauge of the deployment is the
    sum of its daemons'); a ``_created`` time is the earliest."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.metrics_core import Metric
    from prometheus_client.parser import text_string_to_metric_families

    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in expositions:
        for family in text_string_to_metric_families(text.decode("utf-8")):
            families.setdefault(family.name, family)
            summed = values.setdefault(family.name, {})
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                if key not in summed:
                    summed[key] = sample.value
                elif sample.name.endswith("_created"):
                    summed[key] = min(summed[key], sample.value)
                else:
                    summed[key] += sample.value

    class Merged:
        def collect(self) -> list[Metric]:
            out = []
            for name, family in families.items():
                merged = Metric(name, family.documentation, family.type, family.unit)
                for (sample, labels), value in values[name].items():
                    merged.add_sample(sample, dict(labels), value)
                out.append(merged)
            return out

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Merged())
    return generate_latest(registry)


async def _ask(process: trio.Process, request: bytes) -> bytes:
    assert process.stdin is not None
    assert process.stdout is not None
    await process.stdin.send_all(request)
    (size,) = _HEADER.unpack(await _receive_exactly(process.stdout, _HEADER.size))
    return await _receive_exactly(process.stdout, size)


async def _receive_exactly(stream: trio.abc.ReceiveStream, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = await stream.receive_some(size - len(data))
        if not chunk:
            raise trio.BrokenResourceError("the worker closed its output")
        data += chunk
    return bytes(data)


@asynccontextmanager
async def open_workers(
    spec: WorkerSpec, workers: Workers, *, say: Callable[[str], None]
) -> AsyncIterator[Workers]:
    """Run daemons ``1 .. count - 1`` of ``workers.count`` in worker processes while the
    block runs (none for a count of 1); the caller runs daemon 0 with ``share_of(config,
    0, count)``. Leaving the block stops them gracefully; leaving it by cancellation or
    interruption (a second Ctrl-C) stops them at once."""
    count = workers.count
    if count <= 1:
        yield workers
        return
    try:
        for index in range(1, count):
            part = attrs.evolve(spec, config=share_of(spec.config, index, count))
            process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "fusillade.server.workers"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            workers._workers.append(_Worker(process))
            payload = pickle.dumps(part)
            assert process.stdin is not None
            await process.stdin.send_all(_HEADER.pack(len(payload)) + payload)
        async with trio.open_nursery() as nursery:
            for worker in workers._workers:
                nursery.start_soon(_watch, workers, worker, say)
            yield workers
            await _stop(workers, spec.config, at_once=False)
    finally:  # after an error, a cancellation or a second Ctrl-C: at once
        with trio.CancelScope(shield=True):
            await _stop(workers, spec.config, at_once=True)


async def _watch(workers: Workers, worker: _Worker, say: Callable[[str], None]) -> None:
    status = await worker.process.wait()
    if not workers._closing:
        say(
            f"worker process {worker.pid} exited with status {status}: its requests go back "
            f"to the queue after stale_after; {len(workers.pids) + 1} daemons carry on"
        )


async def _stop(workers: Workers, config: DaemonConfig, *, at_once: bool) -> None:
    """End of file to every worker (graceful); ``at_once``: a SIGTERM too. Wait for
    them; kill those still running ``_KILL_AFTER`` seconds past the grace. The graceful
    wait can be cancelled (a second Ctrl-C: the caller then stops them at once)."""
    workers._closing = True
    with trio.CancelScope(shield=True):
        for worker in workers._workers:
            process = worker.process
            if process.stdin is not None:
                with trio.move_on_after(1):  # a lock held by a metrics request
                    async with worker.lock:
                        await process.stdin.aclose()
            if at_once and process.returncode is None:
                process.send_signal(signal.SIGTERM)
    with trio.move_on_after(config.shutdown_grace.total_seconds() + _KILL_AFTER):
        for worker in workers._workers:
            await worker.process.wait()
    with trio.CancelScope(shield=True):
        for worker in workers._workers:
            if worker.process.returncode is None:
                worker.process.kill()
                await worker.process.wait()


# --- the worker process ------------------------------------------------------------------


def _read_spec() -> WorkerSpec:
    def exactly(size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = os.read(0, size - len(data))
            if not chunk:
                raise SystemExit(0)  # the parent left before saying what to run
            data += chunk
        return data

    (size,) = _HEADER.unpack(exactly(_HEADER.size))
    spec = pickle.loads(exactly(size))
    assert isinstance(spec, WorkerSpec)
    return spec


async def _work(spec: WorkerSpec) -> None:
    import fusillade.engine

    stop = trio.Event()
    everything = trio.CancelScope()
    engines: list[Engine] = []  # the one running, once it does

    async def commands() -> None:
        stdin = trio.lowlevel.FdStream(os.dup(0))
        stdout = trio.lowlevel.FdStream(os.dup(1))
        while command := await stdin.receive_some(1):
            if command == _METRICS:
                from prometheus_client import generate_latest

                text = generate_latest()
            else:  # _NOW
                batch_id = UUID(bytes=await _receive_exactly(stdin, 16))
                daemon = engines[0].daemon if engines else None
                now = DaemonNow.of(daemon, batch_id) if daemon else DaemonNow(0, (), {})
                text = now.to_json()
            await stdout.send_all(_HEADER.pack(len(text)) + text)
        if stop.is_set():  # an end of file after a stop: at once
            everything.cancel()
        stop.set()

    async def signals() -> None:
        with trio.open_signal_receiver(signal.SIGTERM) as received:
            async for _ in received:
                if stop.is_set():
                    everything.cancel()
                stop.set()

    async def deadline() -> None:
        # what the parent does to a worker that will not stop, done here as well: the
        # parent may be gone (a graceful stop can hang on a database that went away)
        await stop.wait()
        await trio.sleep(spec.config.shutdown_grace.total_seconds() + _KILL_AFTER)
        everything.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(commands)
        nursery.start_soon(signals)
        nursery.start_soon(deadline)
        with everything:
            async with fusillade.engine.open(
                spec.database_url, spec.config, migrate=False
            ) as engine:
                engines.append(engine)
                await stop.wait()
        nursery.cancel_scope.cancel()


def main() -> int:
    from fusillade import logs
    from fusillade.errors import FusilladeError
    from fusillade.redact import mask_urls

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides what Ctrl-C means
    spec = _read_spec()
    logs.configure(spec.log_level, spec.log_format)
    try:
        trio.run(_work, spec)
    except BaseException as exc:  # one line, as every command ends
        leaf: Any = exc
        while isinstance(leaf, BaseExceptionGroup) and len(leaf.exceptions) == 1:
            leaf = leaf.exceptions[0]
        if not isinstance(leaf, FusilladeError | OSError):
            raise
        print(f"fusillade worker {os.getpid()}: error: {mask_urls(str(leaf))}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    # the module proper, not ``__main__``: the pickled spec names its classes there
    from fusillade.server.workers import main as worker_main

    sys.exit(worker_main())
