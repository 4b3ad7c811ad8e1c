"""The baselines fusillade is divided by: bare httpx under trio, and pgqueuer.

Both use the client configuration fusillade's ``Dispatcher`` uses (its measured best,
docs/performance.md): shards of ``per_client`` connections each, a request
going to the least-busy shard and a new shard made when every shard is full; each shard
an ``httpx.AsyncHTTPTransport`` called directly (no ``AsyncClient`` layers), the URL
parsed once, the same timeouts, no environment proxies. So for 256 concurrent requests
there are 16 shards of 16 connections; for 400, 25.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx

from benchmarks.common import ENDPOINT, request_body

HEADERS = {"content-type": "application/json"}


TIMEOUTS = {"connect": 10.0, "read": 600.0, "write": 600.0, "pool": None}


class Shards:
    """httpx transports of at most ``per_client`` connections; least-busy first (as
    Dispatcher)."""

    def __init__(self, per_client: int) -> None:
        self.per_client = per_client
        self.clients: list[httpx.AsyncHTTPTransport] = []
        self.active: list[int] = []
        self.urls: dict[str, httpx.URL] = {}
        self.tls = httpx.create_ssl_context(trust_env=False)  # shared, as Dispatcher does

    def _new(self) -> httpx.AsyncHTTPTransport:
        return httpx.AsyncHTTPTransport(
            verify=self.tls,
            limits=httpx.Limits(
                max_connections=self.per_client, max_keepalive_connections=self.per_client
            ),
            trust_env=False,
        )

    def pick(self) -> int:
        best = min(range(len(self.clients)), key=self.active.__getitem__, default=None)
        if best is None or self.active[best] >= self.per_client:
            self.clients.append(self._new())
            self.active.append(0)
            best = len(self.clients) - 1
        return best

    async def post(self, url: str, body: bytes) -> httpx.Response:
        parsed = self.urls.get(url) or self.urls.setdefault(url, httpx.URL(url))
        i = self.pick()
        self.active[i] += 1
        try:
            request = httpx.Request(
                "POST", parsed, content=body, headers=HEADERS, extensions={"timeout": TIMEOUTS}
            )
            response = await self.clients[i].handle_async_request(request)
            try:
                await response.aread()
            finally:
                await response.aclose()
            return response
        finally:
            self.active[i] -= 1

    async def aclose(self) -> None:
        for client in self.clients:
            await client.aclose()


def httpx_trio(params: dict[str, Any]) -> dict[str, Any]:
    """Send ``n`` requests with ``concurrency`` tasks over sharded clients, under trio."""
    import trio

    url = params["upstream"] + ENDPOINT
    n, concurrency = params["n"], params["concurrency"]
    bodies = [request_body(i).encode() for i in range(n)]
    counts = {"ok": 0, "errors": 0}
    error_kinds: dict[str, int] = {}

    async def main() -> float:
        shards = Shards(params["per_client"])
        todo: Iterator[int] = iter(range(n))

        async def worker() -> None:
            for i in todo:
                try:
                    r = await shards.post(url, bodies[i])
                    counts["ok" if r.status_code == 200 else "errors"] += 1
                except httpx.HTTPError as exc:
                    counts["errors"] += 1
                    kind = type(exc).__name__
                    error_kinds[kind] = error_kinds.get(kind, 0) + 1

        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(worker)
        seconds = time.perf_counter() - start
        await shards.aclose()
        return seconds

    seconds = trio.run(main)
    return {"seconds": seconds, "rate": n / seconds, **counts, "error_kinds": error_kinds}


# One statement per job, as a job would naturally store its result.
STORE_RESULT = "INSERT INTO bench_results (job_id, status, body) VALUES (%s, %s, %s)"
CREATE_RESULTS = (
    "CREATE TABLE IF NOT EXISTS bench_results "
    "(job_id bigint PRIMARY KEY, status int NOT NULL, body text NOT NULL)"
)


def pgqueuer_job(params: dict[str, Any]) -> dict[str, Any]:
    """The same job with pgqueuer (asyncio; ``driver`` psycopg, or asyncpg).

    Enqueue ``n`` jobs, then a worker runs them (the last one stops it); each job POSTs
    its payload with httpx (sharded as above) and stores the answer in ``bench_results``
    through a psycopg pool. Timed from the enqueue to the end of the last job."""
    import asyncio
    from datetime import timedelta

    import psycopg
    from pgqueuer import Job, Queries, QueueManager
    from pgqueuer.types import QueueExecutionMode
    from psycopg_pool import AsyncConnectionPool

    url = params["upstream"] + ENDPOINT
    n, concurrency, batch_size = params["n"], params["concurrency"], params["batch_size"]
    payloads: list[bytes | None] = [request_body(i).encode() for i in range(n)]

    async def main() -> dict[str, Any]:
        driver, close = await _driver(params["driver"], params["database_url"])
        queries = Queries(driver)
        await queries.install()
        async with await psycopg.AsyncConnection.connect(params["database_url"]) as setup:
            await setup.execute(CREATE_RESULTS)
        pool = AsyncConnectionPool(params["database_url"], min_size=8, max_size=8, open=False)
        await pool.open(wait=True)
        shards = Shards(params["per_client"])
        qm = QueueManager(queries)
        failures = 0
        last_done = [0.0]
        done = [0]

        @qm.entrypoint("send")
        async def send(job: Job) -> None:
            nonlocal failures
            assert job.payload is not None
            try:
                r = await shards.post(url, job.payload)
            except httpx.HTTPError:
                failures += 1
                raise
            async with pool.connection() as c:
                await c.execute(STORE_RESULT, (job.id, r.status_code, r.text))
            last_done[0] = time.perf_counter()
            done[0] += 1
            if done[0] == n:
                qm.shutdown.set()

        start = time.perf_counter()
        await queries.enqueue(["send"] * n, payloads, [0] * n)
        enqueued = time.perf_counter() - start
        await qm.run(
            batch_size=batch_size,
            mode=QueueExecutionMode.continuous,  # stopped by the last job
            max_concurrent_tasks=concurrency,
            dequeue_timeout=timedelta(seconds=1),
        )
        # Timed to the last job's end: the worker's own shutdown (flushing its buffers,
        # stopping its listener) is not part of the work, as fusillade's is not.
        seconds = last_done[0] - start
        drained = time.perf_counter() - start
        async with pool.connection() as c:
            cur = await c.execute("SELECT count(*) FROM bench_results")
            row = await cur.fetchone()
        stored = int(row[0]) if row else 0
        await shards.aclose()
        await pool.close()
        await close()
        return {
            "seconds": seconds,
            "enqueue_seconds": enqueued,
            "drained_seconds": drained,
            "rate": n / seconds,
            "stored": stored,
            "failures": failures,
        }

    return asyncio.run(main())


async def _driver(kind: str, url: str) -> tuple[Any, Any]:
    """A pgqueuer driver on one new connection, and the coroutine function closing it."""
    if kind == "asyncpg":
        import asyncpg
        from pgqueuer import AsyncpgDriver

        conn = await asyncpg.connect(url)
        return AsyncpgDriver(conn), conn.close
    import psycopg
    from pgqueuer import PsycopgDriver

    pconn = await psycopg.AsyncConnection.connect(url, autocommit=True)
    return PsycopgDriver(pconn), pconn.close
