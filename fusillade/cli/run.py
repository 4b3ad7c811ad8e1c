"""``fusillade run IN.jsonl -o OUT.jsonl``: one input file end to end, durably, resumably.

Theory of operation
-------------------
The input is validated completely before anything is stored or sent (a bad file exits
2 with its line numbers). A small state file beside the output
(``OUT.jsonl.fusillade-run.json``) records the batch id and the input's SHA-256
*before* the batch is created, and batch creation is idempotent for that id; so a run
killed at any point and started again with the same input and output resumes the same
batch: finished requests are not sent again, and the output files are rewritten whole
at the end (no duplicate lines). A different input (another hash) or ``--fresh`` starts a
new batch; ``--retry-failed`` runs the failed lines of a finished one again. Routing,
keys and limits are the daemon's, read when sending: a rerun applies its own to what is
left.

Successes go to ``OUT``; failed, cancelled and expired requests to the error file,
``OUT`` with ``.errors.jsonl`` in place of ``.jsonl`` (``--errors FILE`` to choose;
``--single-file`` to write both kinds of lines to ``OUT``). ``-o -`` writes to standard
output, error lines included unless ``--errors FILE`` says otherwise; the state file
then goes beside the input (``IN.jsonl.stdout.fusillade-run.json``). Lines come in
completion order, or in input order with ``--ordered`` (read by line number, a page at a
time). Exit status: 0 when every request succeeded, 1 when some did not, 2 on a usage or
input error.

The in-process daemon is one of ``--workers N`` (default one per core): the other
``N - 1`` run in worker processes (``fusillade.server.workers``), each with its share of
the per-model concurrency; the progress line adds up their requests in flight, and a
pause or an interruption stops them with this process's daemon.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, contextmanager
from datetime import timedelta
from pathlib import Path
from typing import BinaryIO, TextIO
from uuid import UUID

import attrs
import trio

import fusillade.engine
from fusillade.core.ids import format_id
from fusillade.core.jsonl import JsonlLimits, iter_validated
from fusillade.core.models import BatchStatus, BatchView, RequestState
from fusillade.core.results import ResultLine, format_result_line
from fusillade.engine import Engine, Rules
from fusillade.errors import FusilladeError, NotFound, ValidationError
from fusillade.ids import next_uuid7
from fusillade.progress import Progress, error_summary
from fusillade.runtime.config import DaemonConfig
from fusillade.server.workers import DaemonNow, Workers, WorkerSpec, open_workers, share_of

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
STDOUT = Path("-")  # ``-o -``, ``--errors -``: standard output
_LINES_PER_WRITE = 1000


@attrs.frozen
class RunOptions:
    input: Path
    output: Path
    errors: Path | None = None
    single_file: bool = False
    endpoint: str | None = None
    completion_window: str = "24h"
    progress_interval: timedelta = timedelta(seconds=5)
    fresh: bool = False  # a new batch, whatever the state file says
    retry_failed: bool = False  # a finished batch: run its failed and cancelled lines again
    ordered: bool = False  # results in input order, not completion order
    # routing, concurrency, retries: the configuration's (``Settings.daemon_config()``)
    daemon: DaemonConfig = attrs.field(factory=DaemonConfig)
    # daemon processes, this one's included (``fusillade.server.workers``)
    workers: int = 1
    log_level: str = "warning"  # the worker processes'
    log_format: str = "text"

    @property
    def errors_with_output(self) -> bool:
        """Error lines go where the successes go: ``--single-file``, ``-o -`` without
        ``--errors FILE``, or both ``-``."""
        if self.single_file:
            return True
        if self.output == STDOUT:
            return self.errors in (None, STDOUT)
        return False

    @property
    def error_path(self) -> Path:
        if self.errors is not None:
            return self.errors
        name = self.output.name
        stem = name[: -len(".jsonl")] if name.endswith(".jsonl") else name
        return self.output.with_name(stem + ".errors.jsonl")

    @property
    def state_path(self) -> Path:
        """Beside the output; with ``-o -``, beside the input (``.stdout`` in its name)."""
        if self.output == STDOUT:
            return self.input.with_name(self.input.name + ".stdout.fusillade-run.json")
        return self.output.with_name(self.output.name + ".fusillade-run.json")

    @property
    def destination(self) -> str:
        """Where the results go, for the summary line."""

        def name(path: Path) -> str:
            return "standard output" if path == STDOUT else str(path)

        if self.errors_with_output:
            return name(self.output)
        return f"{name(self.output)} and {name(self.error_path)}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _batch_id_for(options: RunOptions, input_hash: str) -> tuple[UUID, bool]:
    """The batch id of this input and output: the recorded one, or a new one (recorded
    now: ``True``)."""
    try:
        state = json.loads(options.state_path.read_text())
        if state.get("input_sha256") == input_hash and not options.fresh:
            return UUID(state["batch_id"]), False
    except (OSError, ValueError, KeyError):
        pass
    batch_id = next_uuid7()
    tmp = options.state_path.with_name(options.state_path.name + ".tmp")
    tmp.write_text(json.dumps({"batch_id": str(batch_id), "input_sha256": input_hash}) + "\n")
    os.replace(tmp, options.state_path)
    return batch_id, True


async def _write_results(engine: Engine, view: BatchView, options: RunOptions) -> None:
    """The batch's output and error files, byte for byte as the server serves them
    (``--ordered``: the same lines in input order)."""
    with ExitStack() as stack:
        out = stack.enter_context(_target(options.output))
        together = options.errors_with_output
        err = out if together else stack.enter_context(_target(options.error_path))
        if options.ordered:
            await _write_by_line(engine.iter_results_by_line(view.record.id), out, err)
            return
        for file_id, target in ((view.record.output_file_id, out),
                                (view.record.error_file_id, err)):  # fmt: skip
            async for chunk in await engine.file_content(file_id):
                target.write(chunk)


async def _write_by_line(lines: AsyncIterator[ResultLine], out: BinaryIO, err: BinaryIO) -> None:
    """Output lines to ``out`` and error lines to ``err`` (maybe the same file) in the
    order of ``lines``, formatted as the server's download formats them; one read of the
    batch, a write per ``_LINES_PER_WRITE`` lines."""
    pending: dict[BinaryIO, list[str]] = {out: [], err: []}
    async for line in lines:
        chunk = pending[out if line.state is RequestState.COMPLETED else err]
        chunk.append(format_result_line(line) + "\n")
        if len(chunk) >= _LINES_PER_WRITE:
            _flush(pending)
    _flush(pending)


def _flush(pending: dict[BinaryIO, list[str]]) -> None:
    for target, chunk in pending.items():
        if chunk:
            target.write("".join(chunk).encode("utf-8"))
            chunk.clear()


@contextmanager
def _target(path: Path) -> Iterator[BinaryIO]:
    """Standard output for ``-``, else ``path`` written through a temporary file renamed
    into place on success (a reader never sees half a file)."""
    if path == STDOUT:
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()  # a closed pipe raises here: the CLI ends quietly
        return
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        yield f
    os.replace(tmp, path)


@attrs.frozen
class CheckedInput:
    """What ``check_input`` learned of a valid input file."""

    endpoint: str
    models: frozenset[str]  # at most _MAX_MODELS of them


# a local file: no upload limits
_RULES = Rules(limits=JsonlLimits(max_lines=None, max_file_bytes=None))
_MAX_MODELS = 10_000  # distinct models remembered for the preflight (memory stays bounded)


def check_input(options: RunOptions) -> CheckedInput:
    """Validate the whole input before anything is stored or sent (blocking file I/O).

    Raises:
        InvalidJSONL: the file breaks the batch file rules (its line numbers).
        ValidationError: a line's url is not the batch endpoint (``--endpoint``, else
            the url of line 1): one batch has one endpoint.
    """
    endpoint = options.endpoint
    models: set[str] = set()
    mismatch: tuple[int, str] | None = None
    with options.input.open("rb") as stream:
        # blank lines are refused before the end, so the n-th request is line n
        for n, template in enumerate(iter_validated(stream, _RULES.limits), start=1):
            if endpoint is None:
                endpoint = template.path
            elif mismatch is None and template.path != endpoint:
                mismatch = (n, template.path)
            if len(models) < _MAX_MODELS:
                models.add(template.model)
    assert endpoint is not None  # a file without request lines is InvalidJSONL
    if mismatch is not None:
        n, path = mismatch
        source = "--endpoint" if options.endpoint else "the url of line 1"
        raise ValidationError(
            f"line {n}: url {path!r} is not the batch endpoint {endpoint!r} ({source}); "
            f"every line of a batch has the same url: run the {path!r} lines as a batch "
            "of their own",
            param="endpoint",
        )
    return CheckedInput(endpoint, frozenset(models))


@attrs.define
class _Interrupts:
    """Ctrl-C while ``run`` runs: the first pauses (the watch ends, the daemon stops
    gracefully, finishing what is in flight for up to ``shutdown_grace``), the second
    stops at once (in-flight rows are handed back)."""

    everything: trio.CancelScope
    watching: trio.CancelScope | None = None
    count: int = 0
    view: BatchView | None = None  # the latest seen

    async def listen(self, signals: AsyncIterator[int], stderr: TextIO) -> None:
        async for _ in signals:
            self.count += 1
            if self.count == 1 and self.watching is not None:
                print(
                    ("\n" if stderr.isatty() else "")  # below the progress bar
                    + "pausing: letting requests in flight finish (Ctrl-C again to stop now)",
                    file=stderr,
                )
                self.watching.cancel()
            else:
                self.everything.cancel()


async def run_batch(
    url: str, options: RunOptions, checked: CheckedInput, *, stderr: TextIO = sys.stderr
) -> tuple[int, BatchView | None]:
    """Run (or resume) the batch of ``options.input``; return the exit status and batch
    (``None`` when Ctrl-C came before the batch was there)."""
    with trio.open_signal_receiver(signal.SIGINT) as signals:
        interrupts = _Interrupts(trio.CancelScope())
        async with trio.open_nursery() as nursery:
            nursery.start_soon(interrupts.listen, signals, stderr)
            status = EXIT_INTERRUPTED
            with interrupts.everything:
                status = await _run_batch(url, options, checked, interrupts, stderr)
            nursery.cancel_scope.cancel()
    view = interrupts.view
    if interrupts.count:
        done = ""
        if view is not None:
            c = view.counts
            done = f" with {c.completed + c.failed + c.canceled} of {c.total} requests done"
        print(
            f"paused{done}: run the same command again to resume (its state: {options.state_path})",
            file=stderr,
        )
        return EXIT_INTERRUPTED, view
    return status, view


async def _run_batch(
    url: str,
    options: RunOptions,
    checked: CheckedInput,
    interrupts: _Interrupts,
    stderr: TextIO,
) -> int:
    """``run_batch`` within its Ctrl-C handling; the latest view goes to ``interrupts``."""
    input_hash = _sha256(options.input)
    rules = _RULES
    endpoint = checked.endpoint
    batch_id, recorded = _batch_id_for(options, input_hash)
    progress = Progress(stderr, interval=options.progress_interval.total_seconds())
    own = share_of(options.daemon, 0, options.workers)
    async with (
        fusillade.engine.open(url, own, rules=rules) as engine,
        open_workers(
            WorkerSpec(url, options.daemon, options.log_level, options.log_format),
            Workers(options.workers),
            say=lambda line: print(f"fusillade run: {line}", file=stderr),
        ) as workers,
    ):
        try:
            view = await engine.get_batch(batch_id)
        except NotFound:
            try:
                stored = await engine.create_file(options.input)
                view = await engine.create_batch(
                    stored.id,
                    endpoint=endpoint,
                    completion_window=options.completion_window,
                    batch_id=batch_id,
                )
            except FusilladeError:
                if recorded:  # no batch: no state pointing at one
                    options.state_path.unlink(missing_ok=True)
                raise
            public = format_id("batch", batch_id)
            print(f"started batch {public}: {view.counts.total} requests", file=stderr)
        else:
            print(f"resuming batch {format_id('batch', batch_id)}", file=stderr)
            view = await _again(engine, view, options, stderr)
        interrupts.view = view
        trouble = None
        with trio.CancelScope() as interrupts.watching:
            async for view in engine.watch(batch_id, interval=0.25):
                interrupts.view = view
                final = view.status.is_terminal
                if progress.details_due(final=final):
                    trouble = await engine.batch_trouble(batch_id)
                throttled, paused, in_flight = await _daemons_now(engine, workers, batch_id)
                progress.update(
                    view,
                    final=final,
                    throttled=throttled,
                    paused=paused,
                    trouble=trouble,
                    in_flight=in_flight,
                )
        interrupts.watching = None  # from here a Ctrl-C stops at once
        if interrupts.count:
            if engine.daemon is not None:  # pausing: this daemon stops with the workers
                engine.daemon.stop()
            _, _, in_flight = await _daemons_now(engine, workers, batch_id)
            progress.update(view, final=True, trouble=trouble, in_flight=in_flight)
            return EXIT_INTERRUPTED
        await _write_results(engine, view, options)
        c = view.counts
        kinds = await engine.error_kinds(batch_id) if c.failed + c.canceled else None
    print(
        f"{view.status.value}: {c.completed} succeeded, {c.failed} failed, "
        f"{c.canceled} canceled of {c.total}; results in {options.destination}",
        file=stderr,
    )
    for line in error_summary(kinds) if kinds is not None else ():
        print(line, file=stderr)
    ok = view.status is BatchStatus.COMPLETED and c.completed == c.total
    return EXIT_OK if ok else EXIT_SOME_FAILED


async def _daemons_now(
    engine: Engine, workers: Workers, batch_id: UUID
) -> tuple[tuple[str, ...], list[str], int | None]:
    """What the daemons of this run (in process and in its workers) do for the batch:
    why the budgets hold requests back (``rpm``...), the models paused after a 429 with
    the time left, and the batch's requests sent and not yet answered: what the upstream
    sees, never more than the concurrency (the batch's ``in_progress`` count also holds
    answers being recorded); ``None`` when a worker does not answer (the line shows the
    database's ``claimed`` count instead)."""
    if engine.daemon is None:
        return (), [], None
    theirs, complete = await workers.now_of(batch_id)
    nows = [DaemonNow.of(engine.daemon, batch_id), *theirs]
    throttled = tuple(sorted({reason for now in nows for reason in now.throttled}))
    paused: dict[str, float] = {}
    for now in nows:
        for model, left in now.paused.items():
            paused[model] = max(left, paused.get(model, left))
    paused_text = [f"{m} {math.ceil(max(left, 0))}s" for m, left in sorted(paused.items())]
    in_flight = sum(now.in_flight for now in nows) if complete else None
    return throttled, paused_text, in_flight


async def _again(engine: Engine, view: BatchView, options: RunOptions, stderr: TextIO) -> BatchView:
    """A resumed batch that already finished: its failed lines run again with
    ``--retry-failed`` (under this run's routing, keys and limits), else a hint."""
    c = view.counts
    unfinished = c.failed + c.canceled
    if not view.status.is_terminal or not unfinished:
        return view
    if options.retry_failed:
        print(f"retrying {unfinished} failed or cancelled requests", file=stderr)
        return await engine.retry_failed(view.record.id, include_cancelled=True)
    print(
        f"this batch already finished with {unfinished} requests failed or cancelled: "
        "--retry-failed runs them again, --fresh starts a new batch",
        file=stderr,
    )
    return view


def check_options(options: RunOptions) -> None:
    """Raise ``ValidationError`` for options that cannot work, before anything starts."""
    if not options.input.is_file():
        raise ValidationError(f"no input file at {options.input}")
    if options.output != STDOUT and options.output.resolve() == options.input.resolve():
        raise ValidationError("the output file must not be the input file")
    targets = [("-o", options.output)]
    if not options.errors_with_output:
        targets.append(("--errors", options.error_path))
    for flag, path in targets:
        if path != STDOUT and not path.parent.is_dir():
            raise ValidationError(
                f"{flag} {path}: the directory {path.parent} does not exist: "
                "create it, or write somewhere else"
            )
    from fusillade.core.windows import parse_completion_window

    window = parse_completion_window(options.completion_window)
    if window < timedelta(seconds=1):
        raise ValidationError("--completion-window must be at least 1s")
