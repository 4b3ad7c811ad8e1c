"""The sender microbenchmark (``benchmarks.senders``) and its fault probe, so they cannot rot.

Nothing is timed. The probe's first column is today's classification of each fault: the
outcomes a new sender must reproduce (issue 16), pinned here against real sockets. Both
run as the documentation says (``python -m ...`` from the repository root).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CANDIDATES = ("fusillade", "fusillade-1", "httpcore-1", "httpcore-4", "httpcore-16", "h11", "floor")
OPTIONAL = ("httptools", "httptools-trio", "pycurl")  # the bench extra


def _run(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=110
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout


@pytest.mark.timeout(120)
def test_today_classifies_each_fault_as_the_docs_say() -> None:
    lines = [line for line in _run("benchmarks.sender_faults").splitlines() if line.startswith("|")]
    rows = [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines]
    assert rows[0][:2] == ["fault", "today (Dispatcher)"]
    assert {row[0]: row[1] for row in rows[2:]} == {
        "refused": "connect: ConnectError",
        "held past the timeout": "read_timeout: request timed out",
        "closed before answering": "protocol: RemoteProtocolError",
        "reset after the request": "read: ReadError",
        "truncated body": "protocol: RemoteProtocolError",
        "not HTTP": "protocol: RemoteProtocolError",
        "chunked answer (not a fault)": "HTTP 200",
    }
    # every installed candidate got the chunked answer whole
    assert all(cell == "HTTP 200" for cell in rows[-1][1:]), rows[-1]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_every_candidate_sends_or_says_why_not() -> None:
    out = _run("benchmarks.senders", "--requests", "300", "--slots", "8", "--rounds", "1")
    for name in CANDIDATES:
        assert f"| {name} | " in out, out
    for name in OPTIONAL:
        assert f"| {name} | " in out or f"{name}: not measured" in out, out
