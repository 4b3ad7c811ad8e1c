"""``fusillade run IN.jsonl -o OUT.jsonl``: one input file end to end, durably, resumably.

Theory of operation
-------------------
The input is validated completely before anything is stored or sent (a bad file exits
2 with its line numbers). A small state file beside the output
(``OUT.jsonl.fusillade-run.json``) records the batch id and the input's SHA-256
*before* the batch is created, and batch creation is idempotent for that id; so a run
killed at any point and started again with the same input and output resumes the same
batch: finished requests are not sent again, and the output files are rewritten whole
at the end (no duplicate lines). A different input (another hash) starts a new batch.

Successes go to ``OUT``; failed, cancelled and expired requests to the error file,
``OUT`` with ``.errors.jsonl`` in place of ``.jsonl`` (``--errors FILE`` to choose;
``--single-file`` to write both kinds of lines to ``OUT``). Exit status: 0 when every
request succeeded, 1 when some did not, 2 on a usage or input error.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import timedelta
from pathlib import Path
from typing import BinaryIO, TextIO
from uuid import UUID

import anyio
import attrs

import fusillade.engine
from fusillade.core.jsonl import JsonlLimits, validate_file
from fusillade.core.models import (
    BatchStatus,
    BatchView,
    RequestTemplate,
)
from fusillade.engine import Engine, Rules
from fusillade.errors import NotFound, ValidationError
from fusillade.ids import next_uuid7
from fusillade.progress import Progress
from fusillade.runtime.config import DaemonConfig

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2


@attrs.frozen
class RunOptions:
    input: Path
    output: Path
    errors: Path | None = None
    single_file: bool = False
    endpoint: str | None = None
    completion_window: str = "24h"
    progress_interval: timedelta = timedelta(seconds=5)
    # routing, concurrency, retries: the configuration's (``Settings.daemon_config()``)
    daemon: DaemonConfig = attrs.field(factory=DaemonConfig)

    @property
    def error_path(self) -> Path:
        if self.errors is not None:
            return self.errors
        name = self.output.name
        stem = name[: -len(".jsonl")] if name.endswith(".jsonl") else name
        return self.output.with_name(stem + ".errors.jsonl")

    @property
    def state_path(self) -> Path:
        return self.output.with_name(self.output.name + ".fusillade-run.json")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _batch_id_for(options: RunOptions, input_hash: str) -> UUID:
    """The batch id of this input and output: the recorded one, or a new one (recorded)."""
    try:
        state = json.loads(options.state_path.read_text())
        if state.get("input_sha256") == input_hash:
            return UUID(state["batch_id"])
    except (OSError, ValueError, KeyError):
        pass
    batch_id = next_uuid7()
    tmp = options.state_path.with_name(options.state_path.name + ".tmp")
    tmp.write_text(json.dumps({"batch_id": str(batch_id), "input_sha256": input_hash}) + "\n")
    os.replace(tmp, options.state_path)
    return batch_id


async def _write_results(engine: Engine, view: BatchView, options: RunOptions) -> None:
    """The batch's output and error files, byte for byte as the server serves them."""
    with ExitStack() as stack:
        out = stack.enter_context(_atomic(options.output))
        err = out if options.single_file else stack.enter_context(_atomic(options.error_path))
        for file_id, target in ((view.record.output_file_id, out),
                                (view.record.error_file_id, err)):  # fmt: skip
            async for chunk in await engine.file_content(file_id):
                target.write(chunk)


@contextmanager
def _atomic(path: Path) -> Iterator[BinaryIO]:
    """Write ``path`` through a temporary file renamed into place on success."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        yield f
    os.replace(tmp, path)


async def run_batch(
    url: str, options: RunOptions, *, stderr: TextIO = sys.stderr
) -> tuple[int, BatchView]:
    """Run (or resume) the batch of ``options.input``; return the exit status and batch."""
    input_hash = _sha256(options.input)
    # a local file: no upload limits
    rules = Rules(limits=JsonlLimits(max_lines=None, max_file_bytes=None))
    # Validate everything before storing or sending anything.

    def check() -> RequestTemplate:
        with options.input.open("rb") as stream:
            return validate_file(stream, rules.limits)

    first = await anyio.to_thread.run_sync(check)
    endpoint = options.endpoint or first.path
    batch_id = _batch_id_for(options, input_hash)
    progress = Progress(stderr, interval=options.progress_interval.total_seconds())
    async with fusillade.engine.open(url, options.daemon, rules=rules) as engine:
        try:
            view = await engine.get_batch(batch_id)
            print(f"resuming batch {batch_id}", file=stderr)
        except NotFound:
            stored = await engine.create_file(options.input)
            view = await engine.create_batch(
                stored.id,
                endpoint=endpoint,
                completion_window=options.completion_window,
                batch_id=batch_id,
            )
            print(f"started batch {batch_id}: {view.counts.total} requests", file=stderr)
        async for view in engine.watch(batch_id, interval=0.25):
            daemon = engine.daemon
            throttled = daemon.statistics().throttled if daemon is not None else ()
            progress.update(view, final=view.status.is_terminal, throttled=throttled)
        await _write_results(engine, view, options)
    c = view.counts
    where = str(options.output)
    if not options.single_file:
        where += f" and {options.error_path}"
    print(
        f"{view.status.value}: {c.completed} succeeded, {c.failed} failed, "
        f"{c.canceled} canceled of {c.total}; results in {where}",
        file=stderr,
    )
    ok = view.status is BatchStatus.COMPLETED and c.completed == c.total
    return (EXIT_OK if ok else EXIT_SOME_FAILED), view


def check_options(options: RunOptions) -> None:
    """Raise ``ValidationError`` for options that cannot work, before anything starts."""
    if not options.input.is_file():
        raise ValidationError(f"no input file at {options.input}")
    if options.output.resolve() == options.input.resolve():
        raise ValidationError("the output file must not be the input file")
    from fusillade.core.windows import parse_completion_window

    window = parse_completion_window(options.completion_window)
    if window < timedelta(seconds=1):
        raise ValidationError("--completion-window must be at least 1s")
