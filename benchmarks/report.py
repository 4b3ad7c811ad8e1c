"""The results table: the machine, the versions, the date, one row per measure.

Printed to the terminal, written between the markers of docs/performance.md
(``--out``), and as JSON (``--json``) with every raw number.
"""

from __future__ import annotations

import json
import os
import platform
import re
import sys
from dataclasses import asdict
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from benchmarks.common import Row

START = "<!-- benchmark-results:start -->"
END = "<!-- benchmark-results:end -->"
COLUMNS = ("id", "measure", "target", "result", "baseline", "ratio", "peak RSS", "met", "notes")


def machine() -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    mem = ""
    try:
        text = Path("/proc/cpuinfo").read_text()
        found = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
        if found:
            cpu = found.group(1).strip()
        meminfo = Path("/proc/meminfo").read_text()
        kb = re.search(r"^MemTotal:\s*(\d+) kB", meminfo, re.M)
        if kb:
            mem = f"{int(kb.group(1)) / 2**20:.1f} GiB"
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "ram": mem,
        "os": f"{platform.system()} {platform.release()}",
        "load average at start": load_average(),
    }


def load_average() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg()) + " (1, 5, 15 min)"


def versions(extra: dict[str, str]) -> dict[str, str]:
    out = {"Python": platform.python_version()}
    for name in ("fusillade", "trio", "httpx", "psycopg", "pgqueuer"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    out.update(extra)
    return out


def commit() -> str:
    """The checkout's commit, marked when the work tree has changes."""
    import subprocess

    from benchmarks.common import REPO_ROOT

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=False
        )
        return done.stdout.strip() if done.returncode == 0 else ""

    head = git("rev-parse", "--short", "HEAD")
    if not head:
        return "unknown"
    return head + (" with local changes" if git("status", "--porcelain") else "")


def _met(row: Row) -> str:
    return {True: "yes", False: "**no**", None: ""}[row.met]


def _cells(row: Row) -> list[str]:
    return [
        row.id,
        row.measure,
        row.target,
        row.result,
        row.baseline,
        row.ratio,
        row.peak_rss,
        _met(row),
        "; ".join(row.notes),
    ]


def markdown(rows: list[Row], context: dict[str, Any]) -> str:
    def esc(text: str) -> str:
        return text.replace("|", "\\|")

    lines = [
        f"Run of {context['date']}: `{context['command']}` (sizes: {context['sizes']}, "
        f"{context['runs']} run(s) per measure, medians).",
        "",
    ]
    lines += [f"- **{k}**: {v}" for k, v in context["machine"].items()]
    lines.append("- **versions**: " + ", ".join(f"{k} {v}" for k, v in context["versions"].items()))
    keys = ("commit", "upstream", "sender", "database", "elapsed")
    lines += [f"- **{k}**: {context[k]}" for k in keys if k in context]
    lines += ["", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(esc(c) for c in _cells(r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def terminal(rows: list[Row]) -> str:
    out = []
    for r in rows:
        met = {True: "ok  ", False: "MISS", None: "    "}[r.met]
        line = f"{met} {r.id:<3} {r.measure}\n       {r.result}"
        if r.baseline:
            line += f" | baseline {r.baseline}"
        if r.ratio:
            line += f" | ratio {r.ratio}"
        line += f" | target {r.target}"
        if r.peak_rss:
            line += f" | RSS {r.peak_rss}"
        if r.notes:
            line += "\n       " + "; ".join(r.notes)
        out.append(line)
    return "\n".join(out)


def write_markdown(path: Path, table: str) -> None:
    """Replace what lies between the markers of ``path`` (appended when they are absent)."""
    text = path.read_text() if path.exists() else ""
    block = f"{START}\n{table}{END}"
    if START in text and END in text:
        head, rest = text.split(START, 1)
        _, tail = rest.split(END, 1)
        text = head + block + tail
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + block + "\n"
    path.write_text(text)


def write_json(path: Path, rows: list[Row], context: dict[str, Any]) -> None:
    data = {**context, "rows": [asdict(r) for r in rows]}
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def now_text() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


def command_line() -> str:
    args = " ".join(sys.argv[1:])
    return ("python -m benchmarks " + args).strip()
