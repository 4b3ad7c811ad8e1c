"""The baselines fusillade is divided by: bare httpx under trio, and pgqueuer.

Bare httpx comes in several client layouts (``LAYOUTS``), and P1 and P3 probe them all in
the same run and divide fusillade by the best one (issue 16: the baseline must be the best
layout a user could find). A layout is how many connections each client holds; there are
as many clients as the slots need (256 slots with 4 per client: 64 clients):

- ``client``: ``httpx.AsyncClient``s, as a user writes it (``client.post(url, ...)``);
  task ``i`` of the ``concurrency`` tasks always uses client ``i // per_client``;
- ``transport``: ``httpx.AsyncHTTPTransport``s called directly (no ``AsyncClient``
  layers), the URL parsed once; ``static`` as above, or ``least-busy`` as fusillade's
  ``Dispatcher`` shards (a request goes to the least-busy shard, a new shard is made
  when every shard is full; ``Shards``).

Every layout has the same timeouts, one shared TLS context, no environment proxies.
pgqueuer (P2) sends through ``Shards``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import httpx

from benchmarks.common import ENDPOINT, request_body

HEADERS = {"content-type": "application/json"}


TIMEOUTS = {"connect": 10.0, "read": 600.0, "write": 600.0, "pool": None}


@dataclass(frozen=True)
class Layout:
    """How bare httpx spreads its connections (see the module's docstring)."""

    kind: str  # "client" (httpx.AsyncClient) or "transport" (AsyncHTTPTransport)
    per_client: int  # connections per client
    pick: str = "static"  # "static" (task i -> client i // per_client) or "least-busy"

    def clients(self, slots: int) -> int:
        return -(-slots // self.per_client)

    def describe(self, slots: int) -> str:
        what = "AsyncClients" if self.kind == "client" else "transports"
        text = f"{self.clients(slots)} {what} x {self.per_client}"
        return text + (", least-busy" if self.pick == "least-busy" else "")

    def params(self) -> dict[str, Any]:
        return asdict(self)


# What P1 and P3 probe: the measured layouts (256 x 1, 64 x 4, 16 x 16 clients),
# the harness's baseline before issue 16 (16 x 16 least-busy transports), the
# Dispatcher's shards (4 connections each) and single-connection transports.
LAYOUTS = (
    Layout("client", 1),
    Layout("client", 4),
    Layout("client", 16),
    Layout("transport", 1),
    Layout("transport", 4, "least-busy"),
    Layout("transport", 16, "least-busy"),
)


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


Post = Callable[[int, bytes], Awaitable[int]]  # (task index, body) -> status code


def _sender(layout: Layout, url: str, concurrency: int) -> tuple[Post, Callable[[], Any]]:
    """The ``post`` of a layout, and the coroutine function closing its clients."""
    tls = httpx.create_ssl_context(trust_env=False)
    if layout.pick == "least-busy":
        shards = Shards(layout.per_client)

        async def post_shards(_task: int, body: bytes) -> int:
            return (await shards.post(url, body)).status_code

        return post_shards, shards.aclose
    per = layout.per_client
    limits = httpx.Limits(max_connections=per, max_keepalive_connections=per)
    if layout.kind == "client":
        timeout = httpx.Timeout(**TIMEOUTS)
        clients = [
            httpx.AsyncClient(verify=tls, limits=limits, timeout=timeout, trust_env=False)
            for _ in range(layout.clients(concurrency))
        ]

        async def post_client(task: int, body: bytes) -> int:
            r = await clients[task // per].post(url, content=body, headers=HEADERS)
            return r.status_code

        async def close_clients() -> None:
            for c in clients:
                await c.aclose()

        return post_client, close_clients
    transports = [
        httpx.AsyncHTTPTransport(verify=tls, limits=limits, trust_env=False)
        for _ in range(layout.clients(concurrency))
    ]
    parsed = httpx.URL(url)

    async def post_transport(task: int, body: bytes) -> int:
        request = httpx.Request(
            "POST", parsed, content=body, headers=HEADERS, extensions={"timeout": TIMEOUTS}
        )
        response = await transports[task // per].handle_async_request(request)
        try:
            await response.aread()
        finally:
            await response.aclose()
        return response.status_code

    async def close_transports() -> None:
        for t in transports:
            await t.aclose()

    return post_transport, close_transports


def httpx_trio(params: dict[str, Any]) -> dict[str, Any]:
    """Send ``n`` requests with ``concurrency`` tasks in one ``layout``, under trio.

    ``seconds`` and ``rate`` time the sending only; ``started``/``ended`` are the same
    instants on ``time.monotonic`` (one clock for every process: P1w's several processes
    are timed from the first start to the last end)."""
    import trio

    url = params["upstream"] + ENDPOINT
    n, concurrency = params["n"], params["concurrency"]
    layout = Layout(**params["layout"])
    bodies = [request_body(i).encode() for i in range(n)]
    counts = {"ok": 0, "errors": 0}
    error_kinds: dict[str, int] = {}
    stamps: dict[str, float] = {}

    async def main() -> float:
        post, close = _sender(layout, url, concurrency)
        todo: Iterator[int] = iter(range(n))

        async def worker(task: int) -> None:
            for i in todo:
                try:
                    status = await post(task, bodies[i])
                    counts["ok" if status == 200 else "errors"] += 1
                except httpx.HTTPError as exc:
                    counts["errors"] += 1
                    kind = type(exc).__name__
                    error_kinds[kind] = error_kinds.get(kind, 0) + 1

        stamps["started"] = time.monotonic()
        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for task in range(concurrency):
                nursery.start_soon(worker, task)
        seconds = time.perf_counter() - start
        stamps["ended"] = time.monotonic()
        await close()
        return seconds

    seconds = trio.run(main)
    return {"seconds": seconds, "rate": n / seconds, **counts, "error_kinds": error_kinds, **stamps}


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
