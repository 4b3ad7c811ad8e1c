"""What runs inside a measured child process: ``python -m benchmarks.child NAME JSON``.

Each function takes the decoded JSON parameters and returns a JSON-able dict, printed as
one ``RESULT {...}`` line; a child that must be observed while it runs (P6) prints
``READY`` first. The parent reads the child's peak RSS from the kernel when reaping it.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any
from uuid import UUID

from benchmarks.common import MODEL, READY_LINE, RESULT_PREFIX, SENDER_VARIABLE, request_body


def daemon_config(params: dict[str, Any]) -> Any:
    """The daemon of a child: one upstream ``bench``; with ``budget_share``, that upstream's
    budget keys (P9: nothing configured but the share of the limits learned from headers)."""
    import fusillade

    extra: dict[str, Any] = {k: params[k] for k in ("flush_interval",) if k in params}
    if os.environ.get(SENDER_VARIABLE):  # the harness's --sender
        extra["sender"] = os.environ[SENDER_VARIABLE]
    if "budget_share" in params:
        from fusillade.core.scheduling.budget import BudgetLimits

        extra["upstream_budgets"] = {"bench": BudgetLimits(share=params["budget_share"])}
    upstream = fusillade.Upstream(params["upstream"], slow_start=params.get("slow_start", True))
    return fusillade.DaemonConfig(
        default_concurrency=params.get("concurrency", 256),
        upstreams={"bench": upstream},
        default_upstream="bench",
        connections_per_client=params.get("per_client", 4),
        shutdown_grace=params.get("shutdown_grace", 10.0),
        **extra,
    )


def templates(n: int) -> Iterator[Any]:
    from fusillade import RequestTemplate

    for i in range(n):
        yield RequestTemplate(custom_id=f"req-{i:08d}", model=MODEL, body=request_body(i))


def fusillade_batch(params: dict[str, Any]) -> dict[str, Any]:
    """P1/P3 through the library: a file of ``n`` templates (not timed), then
    ``create_batch`` until the batch is terminal (timed), the daemon in this process.
    The batch is polled every 100 ms: each poll counts the batch's rows, so polling
    much faster would take CPU from the daemon on a small machine."""
    import trio

    import fusillade

    async def main() -> dict[str, Any]:
        async with fusillade.open(params["database_url"], daemon_config(params)) as engine:
            file = await engine.create_file(templates(params["n"]))
            start = time.perf_counter()
            batch = await engine.create_batch(file.id)
            view = await engine.wait(batch.record.id, interval=0.1)
            seconds = time.perf_counter() - start
        c = view.counts
        return {
            "seconds": seconds,
            "rate": params["n"] / seconds,
            "status": view.status.value,
            "completed": c.completed,
            "failed": c.failed,
        }

    return trio.run(main)


def ingest(params: dict[str, Any]) -> dict[str, Any]:
    """P4 through the library: ``engine.create_file(path)`` of a JSONL file, nothing else.

    The repository is opened with ``statement_timeout_ms`` from the parameters: the whole
    file is one COPY statement, which the default 30 s timeout cancels for large files."""
    import trio

    import fusillade
    from fusillade.core.jsonl import JsonlLimits
    from fusillade.store.migrate import migrate
    from fusillade.store.postgres import PostgresRepository

    async def main() -> dict[str, Any]:
        limits = JsonlLimits(max_lines=None, max_file_bytes=None)  # a local file, as `run`
        async with fusillade.open(repository=repo, run_daemon=False) as engine:
            start = time.perf_counter()
            record = await engine.create_file(params["path"], limits=limits)
            seconds = time.perf_counter() - start
        return {"seconds": seconds, "lines": record.line_count, "rate": record.line_count / seconds}

    migrate(params["database_url"])
    timeout = params.get("statement_timeout_ms", 30_000)
    with PostgresRepository(params["database_url"], statement_timeout_ms=timeout) as repo:
        return trio.run(main)


def download(params: dict[str, Any]) -> dict[str, Any]:
    """P5 through the library: the content of a batch's output file
    (``engine.file_content``, exactly what ``run`` and the download route write) written
    to ``out``."""
    import trio

    import fusillade

    async def main(out: IO[bytes]) -> dict[str, Any]:
        lines = 0
        size = 0
        async with fusillade.open(params["database_url"], run_daemon=False) as engine:
            start = time.perf_counter()
            batch = await engine.get_batch(UUID(params["batch_id"]))
            async for chunk in await engine.file_content(batch.record.output_file_id):
                out.write(chunk)
                lines += chunk.count(b"\n")
                size += len(chunk)
            seconds = time.perf_counter() - start
        return {"seconds": seconds, "lines": lines, "bytes": size, "rate": lines / seconds}

    with Path(params["out"]).open("wb") as out:
        return trio.run(main, out)


def daemon(params: dict[str, Any]) -> dict[str, Any]:
    """P6: a daemon against a large queue for ``seconds`` (READY once it runs)."""
    import trio

    import fusillade

    async def main() -> dict[str, Any]:
        async with fusillade.open(params["database_url"], daemon_config(params)) as engine:
            print(READY_LINE, flush=True)
            await trio.sleep(params["seconds"])
            view = await engine.get_batch(UUID(params["batch_id"]))
        return {"completed": view.counts.completed, "in_progress": view.counts.in_progress}

    return trio.run(main)


def idle_daemon(params: dict[str, Any]) -> dict[str, Any]:
    """P9: one more daemon on the database, until the parent stops it (READY once it runs)."""
    import trio

    import fusillade

    async def main() -> dict[str, Any]:
        config = daemon_config(params)
        async with fusillade.open(params["database_url"], config, migrate=False):
            print(READY_LINE, flush=True)
            await trio.sleep_forever()
        return {}

    return trio.run(main)


def fleet_daemon(params: dict[str, Any]) -> dict[str, Any]:
    """P15: one of K daemons on one database, until its standard input closes (READY once
    it runs); every ``claim`` call of its daemon is timed (repository call: pool checkout,
    statement and decoding, in the daemon's database thread)."""
    import trio

    import fusillade

    claims: list[tuple[float, float, int]] = []  # (started, seconds, rows)

    async def main() -> dict[str, Any]:
        config = daemon_config(params)
        async with fusillade.open(params["database_url"], config, migrate=False) as engine:
            daemon = engine.daemon
            assert daemon is not None
            repo = daemon.repo.sync
            claim = repo.claim

            def timed_claim(*args: Any, **kwargs: Any) -> Any:
                start = time.perf_counter()
                rows = claim(*args, **kwargs)
                claims.append((start, time.perf_counter() - start, len(rows)))
                return rows

            repo.claim = timed_claim  # type: ignore[method-assign]
            print(READY_LINE, flush=True)
            await trio.to_thread.run_sync(sys.stdin.buffer.read)  # until end of file
        return {"claims": [(round(t, 4), round(d, 6), n) for t, d, n in claims]}

    return trio.run(main)


async def _finished_at(engine: Any, batch_id: Any, start: float, interval: float) -> float:
    """Seconds from ``start`` until the batch is terminal (polled every ``interval``)."""
    view = await engine.wait(batch_id, interval=interval)
    seconds = time.perf_counter() - start
    if view.counts.completed != view.counts.total:
        raise RuntimeError(f"batch {batch_id}: {view.counts} ({view.status.value})")
    return seconds


def fairness(params: dict[str, Any]) -> dict[str, Any]:
    """P10 through the library: owner ``a`` submits ``big`` requests and, once its requests
    flow (``lead`` completed), owner ``b`` submits ``small``; B is timed from its
    ``create_batch`` to its batch terminal, then everything stops (A is not finished).
    With ``big`` 0: B alone."""
    import trio

    import fusillade

    async def main() -> dict[str, Any]:
        async with fusillade.open(params["database_url"], daemon_config(params)) as engine:
            a, b = engine.for_owner("a"), engine.for_owner("b")
            b_file = await b.create_file(templates(params["small"]))
            out: dict[str, Any] = {}
            if params["big"]:
                a_file = await a.create_file(templates(params["big"]))
                a_batch = await a.create_batch(a_file.id)
                async for view in a.watch(a_batch.record.id, interval=0.05):
                    if view.counts.completed >= params["lead"]:
                        break
            start = time.perf_counter()
            b_batch = await b.create_batch(b_file.id)
            out["seconds"] = await _finished_at(b, b_batch.record.id, start, 0.02)
            if params["big"]:
                view = await a.get_batch(a_batch.record.id)
                out["a_completed"] = view.counts.completed  # A is left unfinished
        return out

    return trio.run(main)


def deadline(params: dict[str, Any]) -> dict[str, Any]:
    """P11 through the library: one owner submits ``long`` requests with a 24h window, then
    ``short`` with a 1h window; both are timed from the first ``create_batch``."""
    import trio

    import fusillade

    async def main() -> dict[str, Any]:
        async with fusillade.open(params["database_url"], daemon_config(params)) as engine:
            long_file = await engine.create_file(templates(params["long"]))
            short_file = await engine.create_file(templates(params["short"]))
            start = time.perf_counter()
            long_batch = await engine.create_batch(long_file.id, completion_window="24h")
            short_batch = await engine.create_batch(short_file.id, completion_window="1h")
            submitted = time.perf_counter() - start
            out: dict[str, Any] = {"short_submitted": submitted}

            async def timed(name: str, batch_id: Any) -> None:
                out[name] = await _finished_at(engine, batch_id, start, 0.02)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(timed, "long_seconds", long_batch.record.id)
                nursery.start_soon(timed, "short_seconds", short_batch.record.id)
        return out

    return trio.run(main)


def first_request(params: dict[str, Any]) -> dict[str, Any]:
    """P8 through the library: an idle daemon in this process; per trial, the time from
    calling ``create_batch`` to the first request reaching the (recording) upstream."""
    import trio

    import fusillade
    from benchmarks.recorder import RecordingUpstream

    async def main(recorder: RecordingUpstream) -> list[float]:
        config = daemon_config({**params, "upstream": recorder.url})
        latencies = []
        async with fusillade.open(params["database_url"], config) as engine:
            file = await engine.create_file(templates(params["lines"]))
            for trial in range(params["trials"]):
                # the daemon waits for a NOTIFY or its poll; vary the idle time so that
                # trials do not line up with the poll
                await trio.sleep(params["idle"] + 0.37 * (trial % 3))
                recorder.arm()
                start = time.perf_counter()
                batch = await engine.create_batch(file.id)
                arrived = await trio.to_thread.run_sync(recorder.wait_first, 30.0)
                latencies.append(arrived - start)
                await engine.wait(batch.record.id, interval=0.05)
        return latencies

    with RecordingUpstream() as recorder:
        latencies = trio.run(main, recorder)
    return {"latencies": latencies}


def pgqueuer(params: dict[str, Any]) -> dict[str, Any]:
    from benchmarks.baselines import pgqueuer_job

    return pgqueuer_job(params)


def inflight(params: dict[str, Any]) -> dict[str, Any]:
    """P12 through the library: as ``fusillade_batch``, and also the CPU time of this
    process (every thread) and of its PostgreSQL backends while the batch ran, and the
    time and size of every claim (the slots' refill)."""
    import resource

    import trio

    import fusillade

    claims: list[tuple[float, int]] = []

    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    async def main() -> dict[str, Any]:
        async with fusillade.open(params["database_url"], daemon_config(params)) as engine:
            file = await engine.create_file(templates(params["n"]))
            daemon = engine.daemon
            assert daemon is not None
            repo = daemon.repo.sync
            claim = repo.claim

            def timed_claim(*args: Any, **kwargs: Any) -> Any:
                rows = claim(*args, **kwargs)
                claims.append((time.perf_counter(), len(rows)))
                return rows

            repo.claim = timed_claim  # type: ignore[method-assign]
            backends = await trio.to_thread.run_sync(_backend_cpu, params["database_url"])
            cpu_before = cpu()
            start = time.perf_counter()
            batch = await engine.create_batch(file.id)
            view = await engine.wait(batch.record.id, interval=0.1)
            seconds = time.perf_counter() - start
            cpu_used = cpu() - cpu_before
            backends_after = await trio.to_thread.run_sync(_backend_cpu, params["database_url"])
        pg = sum(t - backends.get(pid, 0.0) for pid, t in backends_after.items())
        return {
            "seconds": seconds,
            "rate": params["n"] / seconds,
            "completed": view.counts.completed,
            "cpu_seconds": cpu_used,
            "pg_cpu_seconds": pg if backends_after else None,
            "claims": [(t - start, n) for t, n in claims],
        }

    return trio.run(main)


def _backend_cpu(database_url: str) -> dict[int, float]:
    """CPU seconds (user + system) so far of every PostgreSQL backend connected to the
    database of ``database_url`` (empty without psutil or when not on this machine)."""
    try:
        import psutil
        import psycopg
    except ImportError:
        return {}
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid()"
        ).fetchall()
    out = {}
    for (pid,) in rows:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        out[pid] = times.user + times.system
    return out


def pgcost(params: dict[str, Any]) -> dict[str, Any]:
    from benchmarks.pgcost import child

    return child(params)


def httpx_baseline(params: dict[str, Any]) -> dict[str, Any]:
    from benchmarks.baselines import httpx_trio

    return httpx_trio(params)


CHILDREN: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "daemon": daemon,
    "deadline": deadline,
    "download": download,
    "fairness": fairness,
    "first_request": first_request,
    "fleet_daemon": fleet_daemon,
    "fusillade_batch": fusillade_batch,
    "httpx": httpx_baseline,
    "idle_daemon": idle_daemon,
    "inflight": inflight,
    "ingest": ingest,
    "pgcost": pgcost,
    "pgqueuer": pgqueuer,
}


def main(argv: list[str]) -> int:
    name, params = argv[1], json.loads(argv[2])
    result = CHILDREN[name](params)
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
