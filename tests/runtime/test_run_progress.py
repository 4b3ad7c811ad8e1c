"""``fusillade run`` explains its progress: retries waiting, 429 pauses, the latest error,
and at the end the most frequent kinds of error with counts (stderr, not a terminal)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import trio

from fusillade.mock_upstream import Behaviour, MockUpstream

pytestmark = pytest.mark.slow

# model: (lines, behaviour)
MODELS = {
    "m-auth": (2, Behaviour(status=401)),  # permanent
    "m-500": (3, Behaviour(status=500)),  # retried until the attempts run out
    "m-429": (2, Behaviour(rate_limit_attempts=1, retry_after=1)),  # then succeeds
    "m-ok": (1, Behaviour()),
}


def write_input(path: Path) -> Path:
    with path.open("w") as f:
        for model, (n, _) in MODELS.items():
            for i in range(n):
                body = {"model": model, "messages": [{"role": "user", "content": f"{i}"}]}
                line = {
                    "custom_id": f"{model}-{i}",
                    "method": "POST",
                    "url": "/v1/chat/completions",
                }
                f.write(json.dumps({**line, "body": body}) + "\n")
    return path


async def test_run_shows_retries_waiting_the_latest_error_and_the_error_kinds(
    database_url: str, mock_upstream: MockUpstream, tmp_path: Path
) -> None:
    mock_upstream.config.per_model = {model: b for model, (_, b) in MODELS.items()}
    src = write_input(tmp_path / "in.jsonl")
    args = [
        sys.executable, "-m", "fusillade", "run", str(src), "-o", str(tmp_path / "out.jsonl"),
        "--upstream", mock_upstream.url, "--database-url", database_url,
        "--max-attempts", "3", "--progress-interval", "0.2",
    ]  # fmt: skip
    with trio.fail_after(120):
        done = await trio.run_process(args, check=False, capture_stderr=True)
    stderr = done.stderr.decode()
    assert done.returncode == 1, stderr  # some failed
    lines = stderr.splitlines()
    progress = [line for line in lines if line.startswith(("in_progress", "completed"))]
    assert any("| retries waiting " in line for line in progress), stderr
    assert any(re.search(r"retries waiting \d+ \(\d+ after 429\)", line) for line in progress)
    assert any("| 429 pause: m-429 " in line for line in progress), stderr
    assert any("| last error: http 500: " in line for line in progress), stderr
    # one line each, nothing of a body's newlines
    errors = [line.split(" | last error: ")[1] for line in progress if "| last error: " in line]
    assert all(len(error) <= 60 for error in errors), errors
    assert "completed: 3 succeeded, 5 failed, 0 canceled of 8" in stderr
    summary = lines[lines.index(next(x for x in lines if x.startswith("errors by kind"))) :]
    assert summary[0] == "errors by kind (of 5 failed, canceled or expired requests):", stderr
    assert re.fullmatch(r"  http 500  3  e\.g\. .+", summary[1]), stderr
    assert re.fullmatch(r"  http 401  2  e\.g\. .+", summary[2]), stderr
    assert len(summary) == 3, stderr
