"""``python -m benchmarks``: run P1-P15 (or some) on this machine and write the table.

    python -m benchmarks                       # everything, full size, 3 runs (~15+ min)
    python -m benchmarks --quick               # scaled down, 1 run: about a minute or two
    python -m benchmarks --only P1,P3 --runs 5
    python -m benchmarks --out docs/performance.md --json results.json

It starts the upstream (nginx if on PATH, else ``fusillade mock-upstream``), uses the
PostgreSQL of ``$DATABASE_URL`` (else 127.0.0.1:5432 as postgres) with a fresh database
per scenario run, and runs every measured thing in a child process. A scenario that
fails becomes a row saying so; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

if not __package__:  # `python benchmarks/run.py`: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import (
    data,
    fleet,
    inflight,
    latency,
    pgcost,
    report,
    retention,
    scale,
    scheduling,
    throughput,
)
from benchmarks.common import FULL, QUICK, SENDER_VARIABLE, SMOKE, Env, Row, Sizes
from benchmarks.database import admin_url, check_server, server_version
from benchmarks.server import server_available
from benchmarks.upstream import Upstreams, upstreams

Scenario = Callable[[Env, Upstreams], list[Row]]
SCENARIOS: dict[str, Scenario] = {
    "P1": throughput.p1,
    "P2": throughput.p2,
    "P3": throughput.p3,
    "P4": data.p4,
    "P5": data.p5,
    "P6": data.p6,
    "P7": scale.p7,
    "P8": latency.p8,
    "P9": scheduling.p9,
    "P10": scheduling.p10,
    "P11": scheduling.p11,
    "P12": inflight.p12,
    "P13": retention.p13,
    "P14": pgcost.p14,
    "P15": fleet.p15,
}
TARGETS = {
    "P1": throughput.P1_TARGET,
    "P2": ">= 2x",
    "P3": throughput.P3_TARGET,
    "P4": ">= 50,000 lines/s, peak RSS < 300 MB",
    "P5": ">= 50,000 lines/s, peak RSS < 300 MB",
    "P6": "< 250 MB, flat",
    "P7": "claim < 20 ms, status < 5 ms",
    "P8": "< 100 ms",
    "P9": scheduling.P9_TARGET,
    "P10": scheduling.P10_TARGET,
    "P11": scheduling.P11_TARGET,
    "P12": inflight.P12_TARGET,
    "P13": f"{retention.P13_SIZE_TARGET}; {retention.P13_CLAIM_TARGET}",
    "P14": pgcost.P14_TARGET,
    "P15": fleet.TARGET,
}


ERROR_LINE = re.compile(r"^[\w.]*(Error|Exception|Unavailable|Timeout|Failed|Exit)\w*: .+")


def cause(exc: Exception) -> str:
    """The line of a (child's) traceback that says what went wrong, for the table."""
    lines = [ln.strip(" |") for ln in str(exc).splitlines()]
    found = [ln for ln in lines if ERROR_LINE.match(ln)]
    text = found[-1] if found else (lines[0] if lines else type(exc).__name__)
    return text[:300]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    p.add_argument("--only", help="comma-separated scenario ids (default: all), e.g. P1,P3")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="scaled down, 1 run by default")
    size.add_argument("--smoke", action="store_true", help="tiny (the smoke test), 1 run")
    p.add_argument("--scale", type=float, help="multiply the full sizes by this factor")
    p.add_argument("--runs", type=int, help="runs per measure, medians (default 3; 1 quick)")
    p.add_argument("--out", type=Path, help="markdown file whose results section to rewrite")
    p.add_argument("--json", type=Path, help="write every number to this JSON file")
    p.add_argument("--database-url", help="maintenance database URL (default: $DATABASE_URL)")
    p.add_argument("--results-dir", type=Path, help="where P7 saves its EXPLAIN output")
    p.add_argument("--no-nginx", action="store_true", help="use mock-upstream even with nginx")
    p.add_argument(
        "--sender",
        choices=["httpcore", "httptools"],
        help="the daemons' [daemon] sender, for every child (default: the daemon's default)",
    )
    args = p.parse_args(argv)
    ids = [s.strip().upper() for s in args.only.split(",")] if args.only else list(SCENARIOS)
    unknown = [i for i in ids if i not in SCENARIOS]
    if unknown:
        p.error(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
    args.ids = ids
    return args


def sizes_of(args: argparse.Namespace) -> tuple[Sizes, int]:
    base = SMOKE if args.smoke else QUICK if args.quick else FULL
    if args.scale is not None:
        base = base.scaled(args.scale)
    runs = args.runs or (1 if args.smoke or args.quick else 3)
    return base, runs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes, runs = sizes_of(args)
    if args.sender:
        os.environ[SENDER_VARIABLE] = args.sender
    started = time.monotonic()
    commit, machine = report.commit(), report.machine()

    def log(line: str) -> None:
        print(f"[{time.monotonic() - started:7.1f}s] {line}", file=sys.stderr, flush=True)

    admin, origin = (args.database_url, "--database-url") if args.database_url else admin_url()
    check_server(admin)
    available, note = server_available()
    results_dir = args.results_dir or Path(__file__).parent / "results"
    if sizes.name != "full" and args.results_dir is None:
        results_dir = results_dir / sizes.name.replace(" ", "")
    rows: list[Row] = []
    failed = False
    with (
        tempfile.TemporaryDirectory(prefix="fusillade-bench-") as workdir,
        upstreams([sizes.p3_latency, sizes.p12_latency], prefer_nginx=not args.no_nginx) as up,
    ):
        env = Env(
            admin_url=admin,
            database_origin=origin,
            sizes=sizes,
            runs=runs,
            workdir=Path(workdir),
            upstream_kind=up.kind,
            server_available=available,
            server_note=note,
            results_dir=results_dir,
            log=log,
        )
        log(f"upstream: {up.kind}; database: {origin}; sizes {sizes.name}, {runs} run(s)")
        if not available:
            log(note)
        for sid in args.ids:
            log(f"--- {sid}")
            try:
                rows += SCENARIOS[sid](env, up)
            except Exception as exc:
                failed = True
                log(traceback.format_exc())
                rows.append(Row(sid, "scenario failed", TARGETS[sid], f"error: {cause(exc)}"))
    context = {
        "date": report.now_text(),
        "command": report.command_line(),
        "sizes": sizes.name,
        "runs": runs,
        "machine": {**machine, "load average at end": report.load_average()},
        "versions": report.versions({"PostgreSQL": server_version(admin)}),
        "commit": commit,
        "upstream": up.kind,
        "sender": os.environ.get(SENDER_VARIABLE) or "the default ([daemon] sender)",
        "database": f"{origin} (a fresh database per scenario run)",
        "elapsed": f"{time.monotonic() - started:.0f} s",
    }
    print(report.terminal(rows))
    if args.out:
        report.write_markdown(args.out, report.markdown(rows, context))
        log(f"wrote the table into {args.out}")
    if args.json:
        report.write_json(args.json, rows, context)
        log(f"wrote {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
