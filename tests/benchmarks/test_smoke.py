"""The benchmark harness (``python -m benchmarks``) at a tiny scale, so that it cannot rot.

Nothing here is timed or compared with a target: CI does not time anything. The test only
checks that every scenario ran and produced its rows, and that the table, the JSON and
P7's EXPLAIN files were written. It uses nginx when it is on PATH, else mock-upstream.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = {f"P{i}" for i in range(1, 16)}
ROW_IDS = SCENARIOS | {"P1w", "P1c"}  # P1 also reports these (issue 16)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_every_scenario_produces_rows(tmp_path: Path, database_server: object) -> None:
    admin_url: str = database_server.admin_url  # type: ignore[attr-defined]
    results, table = tmp_path / "results.json", tmp_path / "performance.md"
    table.write_text("# Performance\n\n<!-- benchmark-results:start -->\nSTALE-TABLE\n"
                     "<!-- benchmark-results:end -->\n\nkept\n")  # fmt: skip
    command = [
        sys.executable, "-m", "benchmarks", "--smoke",
        "--database-url", admin_url,
        "--json", str(results),
        "--out", str(table),
        "--results-dir", str(tmp_path / "explain"),
    ]  # fmt: skip
    done = subprocess.run(
        command,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=290,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    data = json.loads(results.read_text())
    rows = data["rows"]
    assert {row["id"] for row in rows} == ROW_IDS
    p1c = [row for row in rows if row["id"] == "P1c"]
    assert len(p1c) == 4 and all(row["result"].endswith(" s") for row in p1c), p1c
    failed = [row for row in rows if row["result"].startswith("error")]
    assert not failed, failed
    for row in rows:
        assert row["result"] != "not measured" or row["notes"], row
    assert data["versions"]["PostgreSQL"]
    text = table.read_text()
    assert "STALE-TABLE" not in text and text.endswith("kept\n")
    assert "| P8 |" in text and "| P14 |" in text
    assert sorted(p.name for p in (tmp_path / "explain").iterdir()) == [
        "explain-claim-unclaimable.txt",
        "explain-claim.txt",
        "explain-results-by-line.txt",
        "explain-status-frozen.txt",
        "explain-status-live-counts.txt",
        "explain-status-live.txt",
    ]
