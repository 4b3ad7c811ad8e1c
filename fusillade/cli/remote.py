"""``fusillade submit|status|cancel|results``: against a running server or the database.

With ``--server URL`` (or ``$FUSILLADE_SERVER_URL``) the commands speak the HTTP API
with the bearer key in ``$FUSILLADE_API_KEY`` (``--key-env`` names another variable);
the configuration is not read (the server's applies); ``submit``'s creates carry an
``Idempotency-Key`` and are retried when no answer came (``HttpBackend``). Otherwise
they read the configuration as ``migrate`` does (``fusillade.config``: ``--config``,
``FUSILLADE_*``, ``--database-url``, ``--data-dir``), open its database
(``database_url``, else the embedded PostgreSQL) and act as ``--owner`` (default
``default``, the owner of a server without keys) under its ``[server]`` rules. Both
print the same OpenAI Batch JSON on stdout. ``list``, ``retry`` and ``watch``
(``fusillade.cli.batches``) use the same backends.

Batch ids are taken as ``batch_<hex>`` or, silently, as the bare uuid (``public_id``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from datetime import timedelta
from pathlib import Path
from typing import IO, Any, Final, Protocol, TypeVar
from uuid import UUID, uuid4

import attrs

from fusillade.cli._main import database
from fusillade.config import ServerSettings, settings_from_args
from fusillade.config import add_arguments as add_config_arguments
from fusillade.core.ids import IdKind, format_id
from fusillade.core.models import BatchStatus, BatchView, FailureReason, RequestCounts
from fusillade.core.trouble import BatchTrouble, ErrorKind, ErrorKinds, ErrorSample
from fusillade.engine import Engine
from fusillade.errors import FusilladeError, InvalidJSONL, ValidationError
from fusillade.progress import Snapshot

SERVER_ENV = "FUSILLADE_SERVER_URL"
KEY_ENV = "FUSILLADE_API_KEY"
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
Batch = dict[str, Any]
"""A batch as the API's JSON (what the commands print)."""
T = TypeVar("T")


class Backend(Protocol):
    def submit(
        self, path: Path, endpoint: str, window: str, metadata: dict[str, str] | None
    ) -> Batch: ...
    def get(self, batch_id: str) -> Batch: ...
    def cancel(self, batch_id: str) -> Batch: ...
    def download(self, file_id: str, target: IO[bytes]) -> None: ...
    def list_batches(self, after: str | None, limit: int) -> Batch:
        """A page of ``GET /v1/batches``: ``{"object": "list", "data": [...], ...}``."""
        ...

    def retry(self, batch_id: str, include_cancelled: bool) -> Batch: ...
    def snapshot(self, batch_id: str) -> Snapshot:
        """The batch as the progress line shows it (as detailed as this backend knows)."""
        ...

    def trouble(self, batch_id: str) -> BatchTrouble | None:
        """What holds the batch back (``None``: this backend cannot tell)."""
        ...

    def error_kinds(self, batch_id: str) -> ErrorKinds | None:
        """The batch's most frequent kinds of error (``None``: this backend cannot tell)."""
        ...

    def live_daemons(self) -> int | None:
        """How many daemons work on this backend's batches (``None``: it cannot tell)."""
        ...


RETRY_DELAYS: Final = (0.5, 1.0, 2.0)
"""Seconds before each retry of a create that got no answer, or a 5xx."""
RETRY_STATUSES: Final = frozenset({500, 502, 503, 504})


class HttpBackend:
    """The HTTP API through a blocking httpx client.

    Creates (``submit``'s upload and batch) carry an ``Idempotency-Key`` made once per
    command and kept across their retries: a create that got no answer (the connection
    failed or was reset, a timeout) or a 5xx is sent again after each of ``delays``,
    and the server answers a repeat with what the first one created, so a retried
    ``submit`` never makes two batches. ``transport``: httpx's, for tests.
    """

    def __init__(
        self,
        url: str,
        key: str | None,
        *,
        delays: Sequence[float] = RETRY_DELAYS,
        transport: Any = None,
    ) -> None:
        import httpx

        base = url.rstrip("/")
        base = base if base.endswith("/v1") else base + "/v1"
        headers = {"authorization": f"Bearer {key}"} if key else {}
        self._http = httpx.Client(
            base_url=base,
            headers=headers,
            timeout=httpx.Timeout(60.0, read=600.0),
            transport=transport,
        )
        self._delays = tuple(delays)

    def _create(self, path: str, key: str, request: Callable[[], dict[str, Any]]) -> Batch:
        """POST ``path`` with ``Idempotency-Key: key``, retried (see the class);
        ``request`` gives the arguments of each attempt (a file is opened anew)."""
        import httpx

        for delay in (*self._delays, None):
            try:
                with ExitStack() as stack:
                    kwargs = request()
                    stack.callback(_close_files, kwargs)
                    response = self._http.post(path, headers={"Idempotency-Key": key}, **kwargs)
            except httpx.TransportError:
                if delay is None:
                    raise
            else:
                if response.status_code not in RETRY_STATUSES or delay is None:
                    return self._json(response)
            time.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        self._http.close()

    def _json(self, response: Any) -> Batch:
        if response.status_code >= 400:
            raise _server_error(response.status_code, response.read())
        data: Batch = response.json()
        return data

    def submit(
        self, path: Path, endpoint: str, window: str, metadata: dict[str, str] | None
    ) -> Batch:
        command = f"fusillade-submit-{uuid4().hex}"

        def upload() -> dict[str, Any]:
            # httpx streams the file part from the open file (closed after the attempt)
            files = {"file": (path.name, path.open("rb"), "application/jsonl")}
            return {"files": files, "data": {"purpose": "batch"}}

        stored = self._create("/files", f"{command}-file", upload)
        body: Batch = {"input_file_id": stored["id"], "endpoint": endpoint}
        body["completion_window"] = window
        if metadata:
            body["metadata"] = metadata
        return self._create("/batches", f"{command}-batch", lambda: {"json": body})

    def get(self, batch_id: str) -> Batch:
        return self._json(self._http.get(f"/batches/{batch_id}"))

    def cancel(self, batch_id: str) -> Batch:
        return self._json(self._http.post(f"/batches/{batch_id}/cancel"))

    def download(self, file_id: str, target: IO[bytes]) -> None:
        with self._http.stream("GET", f"/files/{file_id}/content") as response:
            if response.status_code >= 400:
                raise _server_error(response.status_code, response.read())
            for chunk in response.iter_bytes():
                target.write(chunk)

    def list_batches(self, after: str | None, limit: int) -> Batch:
        params: dict[str, str | int] = {"limit": limit}
        if after is not None:
            params["after"] = after
        return self._json(self._http.get("/batches", params=params))

    def retry(self, batch_id: str, include_cancelled: bool) -> Batch:
        params = {"include_cancelled": "true"} if include_cancelled else {}
        return self._json(self._http.post(f"/batches/{batch_id}/retry", params=params))

    def snapshot(self, batch_id: str) -> Snapshot:
        return api_snapshot(self.get(batch_id))

    def _errors(self, batch_id: str, kinds: bool) -> Batch | None:
        """The errors extension (``None`` from a server without it)."""
        params = {"kinds": "true"} if kinds else {}
        response = self._http.get(f"/batches/{batch_id}/errors", params=params)
        if response.status_code == 404:
            return None
        return self._json(response)

    def trouble(self, batch_id: str) -> BatchTrouble | None:
        data = self._errors(batch_id, kinds=False)
        if data is None:
            return None
        latest = data["latest_error"]
        return BatchTrouble(
            retries_waiting=data["retries_waiting"],
            rate_limited=data["rate_limited"],
            capped=data["retries_waiting_capped"],
            latest_failure=_api_error(latest) if latest is not None else None,
        )

    def error_kinds(self, batch_id: str) -> ErrorKinds | None:
        data = self._errors(batch_id, kinds=True)
        if data is None or data["kinds"] is None:
            return None
        kinds = tuple(
            ErrorKind(_api_error({**k, "message": k["example"]}), k["count"]) for k in data["kinds"]
        )
        return ErrorKinds(kinds, data["kinds_scanned"], capped=data["kinds_capped"])

    def live_daemons(self) -> int | None:
        return None  # the server's business: it usually runs its own daemon


def _api_error(error: Batch) -> ErrorSample:
    """An error of the errors extension as the progress line describes it (the server
    sent what the upstream said, already shortened and masked)."""
    return ErrorSample(FailureReason(error["reason"]), error["status"], error["message"])


def _close_files(kwargs: dict[str, Any]) -> None:
    for _, f, _ in kwargs.get("files", {}).values():
        f.close()


def api_snapshot(batch: Batch) -> Snapshot:
    """A Batch of the API as the progress line shows it: its ``failed`` count includes
    the canceled requests, and it says nothing of what is in flight."""
    c = batch["request_counts"]
    total, completed, failed = c["total"], c["completed"], c["failed"]
    counts = RequestCounts(
        total=total, pending=total - completed - failed, completed=completed, failed=failed
    )
    return Snapshot(BatchStatus(batch["status"]), counts, detailed=False)


def _server_error(status: int, body: bytes) -> FusilladeError:
    try:
        error = json.loads(body)["error"]
        message = str(error["message"])
    except (ValueError, KeyError, TypeError):
        message = body.decode("utf-8", "replace")[:200]
    return FusilladeError(f"the server answered {status}: {message}")


class DatabaseBackend:
    """The engine on the database, as one owner: the API's rules (its endpoints and
    windows from the configuration), without the upload limits (the file is local).

    Each call runs the engine in its own ``trio.run``; the repository stays open
    between calls (``--wait`` polls).
    """

    def __init__(
        self,
        url: str,
        owner: str,
        settings: ServerSettings,
        stale_after: timedelta = timedelta(seconds=30),
    ) -> None:
        from fusillade.core.jsonl import JsonlLimits
        from fusillade.server.context import server_rules
        from fusillade.store.postgres import PostgresRepository

        self._repo = PostgresRepository(url, max_size=2)
        self._repo.open()
        self._owner = owner
        self._stale_after = stale_after  # the daemons' (their configuration's)
        limits = JsonlLimits(  # a local file: no upload limits
            max_lines=None, max_file_bytes=None, allowed_endpoints=settings.allowed_endpoints
        )
        self._rules = attrs.evolve(server_rules(settings), limits=limits)

    def close(self) -> None:
        self._repo.close()

    def _run(self, action: Callable[[Engine], Awaitable[T]]) -> T:
        import trio

        async def main() -> T:
            return await action(Engine(self._repo, owner=self._owner, rules=self._rules))

        return trio.run(main)

    def submit(
        self, path: Path, endpoint: str, window: str, metadata: dict[str, str] | None
    ) -> Batch:
        async def submit(engine: Engine) -> BatchView:
            record = await engine.create_file(path)
            return await engine.create_batch(
                record.id, endpoint=endpoint, completion_window=window, metadata=metadata
            )

        return _plain(self._run(submit))

    def get(self, batch_id: str) -> Batch:
        return _plain(self._run(lambda engine: engine.get_batch(batch_id)))

    def cancel(self, batch_id: str) -> Batch:
        return _plain(self._run(lambda engine: engine.cancel_batch(batch_id)))

    def download(self, file_id: str, target: IO[bytes]) -> None:
        async def download(engine: Engine) -> None:
            async for chunk in await engine.file_content(file_id):
                target.write(chunk)

        self._run(download)

    def list_batches(self, after: str | None, limit: int) -> Batch:
        from fusillade.server.wire import batch_list

        page = self._run(lambda engine: engine.list_batches(after=after, limit=limit))
        return _json_of(batch_list(page.items, page.has_more))

    def retry(self, batch_id: str, include_cancelled: bool) -> Batch:
        return _plain(
            self._run(
                lambda engine: engine.retry_failed(batch_id, include_cancelled=include_cancelled)
            )
        )

    def snapshot(self, batch_id: str) -> Snapshot:
        return Snapshot.of(self._run(lambda engine: engine.get_batch(batch_id)))

    def trouble(self, batch_id: str) -> BatchTrouble | None:
        return self._run(lambda engine: engine.batch_trouble(batch_id))

    def error_kinds(self, batch_id: str) -> ErrorKinds | None:
        return self._run(lambda engine: engine.error_kinds(batch_id))

    def live_daemons(self) -> int | None:
        return self._run(lambda engine: engine.live_daemons(stale_after=self._stale_after))


def _plain(view: BatchView) -> Batch:
    """The batch as the API answers it (``BatchObject``), as plain JSON values."""
    from fusillade.server.wire import batch_object

    return _json_of(batch_object(view))


def _json_of(wire: Any) -> Batch:
    """An object of ``fusillade.server.wire`` as plain JSON values."""
    data: Batch = json.loads(json.dumps(attrs.asdict(wire), default=str))
    return data


# --------------------------------------------------------------------- arguments


def public_id(kind: IdKind) -> Callable[[str], str]:
    """An argument type: the public id of ``kind`` as given, or in place of a bare uuid.

    Every command prints ``batch_<hex>`` and ``file-<hex>``; ``run`` printed bare uuids
    before, so those are still accepted (silently). Anything else passes through for the
    engine or the server to refuse as "not found".
    """

    def parse(text: str) -> str:
        text = text.strip()
        try:
            return format_id(kind, UUID(text))
        except ValueError:
            return text

    return parse


batch_arg = public_id("batch")


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    target = parser.add_argument_group("where (a running server, else the database)")
    target.add_argument(
        "--server", metavar="URL", help=f"a running fusillade server (default: ${SERVER_ENV})"
    )
    target.add_argument(
        "--key-env",
        metavar="NAME",
        default=KEY_ENV,
        help=f"variable holding the server's api key (default: {KEY_ENV})",
    )
    target.add_argument(
        "--owner", default="default", help="owner to act as on the database (default: default)"
    )
    add_config_arguments(parser, server=False, daemon=False)  # the database's, as migrate


def add_submit_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=Path, help="an OpenAI batch JSONL file")
    parser.add_argument("--endpoint", help="the batch endpoint (default: the url of line 1)")
    parser.add_argument("--completion-window", default="24h", help="deadline (default 24h)")
    parser.add_argument(
        "--metadata", action="append", default=[], metavar="KEY=VALUE", help="repeatable"
    )
    parser.add_argument(
        "--wait", action="store_true", help="wait until the batch ends (exit 1 if any failed)"
    )
    add_target_arguments(parser)


def add_id_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("batch_id", metavar="ID", type=batch_arg, help="a batch id (batch_...)")
    add_target_arguments(parser)


def add_results_arguments(parser: argparse.ArgumentParser) -> None:
    add_id_arguments(parser)
    parser.add_argument(
        "-o", "--output", type=Path, required=True, help="where to write the successes"
    )
    parser.add_argument(
        "--errors", type=Path, help="where to write the failures (default: OUTPUT.errors.jsonl)"
    )


# ---------------------------------------------------------------------- commands


@contextmanager
def backend(args: argparse.Namespace) -> Iterator[Backend]:
    server = args.server or os.environ.get(SERVER_ENV)
    if server:
        import httpx

        http = HttpBackend(server, os.environ.get(args.key_env))
        try:
            yield http
        except httpx.TransportError as exc:  # the one place the client's errors become ours
            source = "--server" if args.server else f"${SERVER_ENV}"
            raise FusilladeError(
                f"no answer from the server at {server} ({exc or type(exc).__name__}): "
                f"is `fusillade serve` running there? check {source}"
            ) from None
        finally:
            http.close()
        return
    settings = settings_from_args(args)
    with database(settings) as url:
        db = DatabaseBackend(url, args.owner, settings.server, settings.daemon.stale_after)
        try:
            yield db
        finally:
            db.close()


def _show(batch: Batch) -> None:
    print(json.dumps(batch, indent=2, ensure_ascii=False))


def _first_url(path: Path) -> str:
    try:
        with path.open("rb") as f:
            for raw in f:
                if raw.strip():
                    url = json.loads(raw).get("url")
                    return url if isinstance(url, str) else "/v1/chat/completions"
    except (OSError, ValueError, AttributeError):
        pass
    return "/v1/chat/completions"


def _metadata(pairs: list[str]) -> dict[str, str] | None:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValidationError(f"--metadata {pair!r}: expected KEY=VALUE")
        out[key] = value
    return out or None


def _progress(batch: Batch) -> str:
    c = batch["request_counts"]
    return f"{batch['status']} {c['completed'] + c['failed']}/{c['total']} (failed {c['failed']})"


def submit(args: argparse.Namespace) -> int:
    if not args.input.is_file():
        raise ValidationError(f"no input file at {args.input}")
    endpoint = args.endpoint or _first_url(args.input)
    with backend(args) as where:
        try:
            batch = where.submit(
                args.input, endpoint, args.completion_window, _metadata(args.metadata)
            )
        except InvalidJSONL as exc:
            print(f"fusillade submit: {args.input} is not a valid batch file:", file=sys.stderr)
            for problem in exc.problems:
                print(f"  {problem.message}", file=sys.stderr)
            return 2
        print(f"submitted {batch['id']}", file=sys.stderr)
        if args.wait:
            batch = _wait(where, batch)
    _show(batch)
    if args.wait:
        ok = batch["status"] == "completed" and batch["request_counts"]["failed"] == 0
        return 0 if ok else 1
    return 0


NO_DAEMON = (
    "warning: no daemon is running against this database, so nothing will work on "
    "this batch: start one with `fusillade serve` (or `fusillade serve --no-api`) on the "
    "same database, or use `fusillade run FILE -o OUT`; still waiting (Ctrl-C to stop)"
)
DAEMON_BACK = "a daemon is running against this database now"
DAEMON_CHECK = 5.0  # seconds between looks at the daemons' heartbeats


@attrs.define
class DaemonCheck:
    """Says once, while a client waits on a batch of the database, that no daemon is
    running (none with a recent heartbeat), and once more when one is again. Backends
    that cannot tell (the server: it usually runs its own daemon) say nothing."""

    where: Backend
    stream: IO[str]
    warned: bool = False
    _last: float = -1e9

    def check(self) -> None:
        now = time.monotonic()
        if now - self._last < DAEMON_CHECK:
            return
        self._last = now
        live = self.where.live_daemons()
        if live is None:
            return
        if live == 0 and not self.warned:
            print(NO_DAEMON, file=self.stream)
        elif live and self.warned:
            print(DAEMON_BACK, file=self.stream)
        self.warned = live == 0


def _wait(where: Backend, batch: Batch) -> Batch:
    """Poll until the batch ends; on the database, say when no daemon runs (submitting
    only stores the batch)."""
    daemons = DaemonCheck(where, sys.stderr)
    while batch["status"] not in TERMINAL:
        daemons.check()
        time.sleep(1.0)
        batch = where.get(batch["id"])
        print(_progress(batch), file=sys.stderr)
    return batch


def status(args: argparse.Namespace) -> int:
    with backend(args) as where:
        _show(where.get(args.batch_id))
    return 0


def cancel(args: argparse.Namespace) -> int:
    with backend(args) as where:
        _show(where.cancel(args.batch_id))
    return 0


def results(args: argparse.Namespace) -> int:
    errors_path = args.errors or args.output.with_name(args.output.stem + ".errors.jsonl")
    with backend(args) as where:
        batch = where.get(args.batch_id)
        for file_id, path in ((batch["output_file_id"], args.output),
                              (batch["error_file_id"], errors_path)):  # fmt: skip
            tmp = path.with_name(path.name + ".tmp")
            with tmp.open("wb") as target:
                if file_id is not None:
                    where.download(file_id, target)
            tmp.replace(path)
    print(f"{_progress(batch)}; results in {args.output} and {errors_path}", file=sys.stderr)
    return 0
