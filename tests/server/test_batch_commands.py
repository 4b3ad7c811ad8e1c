"""``fusillade list|retry|watch``, and the one id form of every command, driven as a user would.

Each command runs in a subprocess against the in-process server (``--server``) and
against its database (``--database-url``; the server's daemon runs what is stored).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

import pytest
from serverkit import chat_line, fusillade, jsonl

from fusillade.mock_upstream import Behaviour, MockUpstream
from fusillade.server.serve import Running

BATCH_ID = re.compile(r"batch_[0-9a-f]{32}")


def target(mode: str, server: Running, database_url: str) -> list[str]:
    assert server.url is not None
    return ["--server", server.url] if mode == "http" else ["--database-url", database_url]


def bare_uuid(batch_id: str) -> str:
    """The form ``run`` printed before: the uuid with hyphens."""
    return str(UUID(hex=batch_id.removeprefix("batch_")))


async def submit(source: Path, where: list[str]) -> str:
    code, out, err = await fusillade("submit", str(source), *where)
    assert code == 0, err
    batch_id: str = json.loads(out)["id"]
    return batch_id


MODES = pytest.mark.parametrize("mode", ["db", "http"])


@MODES
async def test_watch_then_retry_then_watch(
    mode: str, server: Running, database_url: str, mock_upstream: MockUpstream, tmp_path: Path
) -> None:
    mock_upstream.config.per_model["m-bad"] = Behaviour(status=400)  # not retried
    source = tmp_path / "in.jsonl"
    lines = [chat_line(f"ok{i}") for i in range(3)]
    lines += [chat_line(f"bad{i}", model="m-bad") for i in range(2)]
    source.write_bytes(jsonl(lines))
    where = target(mode, server, database_url)
    batch_id = await submit(source, where)

    code, out, err = await fusillade("watch", batch_id, "--interval", "0.1", *where)
    assert code == 1, err
    assert out == ""
    # the plain (not a terminal) progress form, then the summary
    assert re.search(r"^completed +5/5 \(100\.0%\) ok 3 failed 2 ", err, re.M), err
    # then the kinds of error, from the database or the server's errors extension
    assert re.search(
        r"completed: 3 succeeded, 2 did not, of 5\n"
        r"errors by kind \(of 2 failed, canceled or expired requests\):\n"
        r"  http 400  2  e\.g\. mock status 400\n\Z",
        err,
    ), err
    assert re.search(r"^completed +5/5 .* \| last error: http 400: mock status 400$", err, re.M)
    # the database tells canceled and in-flight requests apart; OpenAI's counts do not
    assert ("canceled 0 claimed 0 |" in err) == (mode == "db"), err

    del mock_upstream.config.per_model["m-bad"]
    code, out, err = await fusillade("retry", batch_id, *where)
    assert code == 0, err
    batch = json.loads(out)
    assert batch["id"] == batch_id
    assert batch["request_counts"]["completed"] == 3
    assert f"fusillade watch {batch_id}" in err

    code, out, err = await fusillade("watch", batch_id, "--interval", "0.1", *where)
    assert code == 0, err
    assert err.endswith("completed: 5 succeeded, 0 did not, of 5\n"), err
    assert mock_upstream.stats.by_model["m-bad"] == 4  # each bad line twice, no more


@MODES
async def test_watch_a_cancelled_batch_exits_1_until_retry_includes_cancelled(
    mode: str, server: Running, database_url: str, mock_upstream: MockUpstream, tmp_path: Path
) -> None:
    mock_upstream.config.default = Behaviour(hold=True)
    source = tmp_path / "in.jsonl"
    source.write_bytes(jsonl(chat_line(f"c{i}") for i in range(2)))
    where = target(mode, server, database_url)
    batch_id = await submit(source, where)
    code, _, err = await fusillade("cancel", batch_id, *where)
    assert code == 0, err
    mock_upstream.release_held()
    code, out, err = await fusillade("watch", batch_id, "--interval", "0.1", *where)
    assert (code, out) == (1, ""), err
    assert re.search(r"^cancelled: 0 succeeded, 2 did not, of 2$", err, re.M), err
    assert re.search(r"^  cancelled  2  e\.g\. batch cancelled$", err, re.M), err

    mock_upstream.config.default = Behaviour()
    code, out, err = await fusillade("retry", batch_id, *where)  # nothing failed: unchanged
    assert code == 0, err
    assert json.loads(out)["status"] == "cancelled"
    code, out, err = await fusillade("retry", batch_id, "--include-cancelled", *where)
    assert code == 0, err
    code, out, err = await fusillade("watch", batch_id, "--interval", "0.1", *where)
    assert (code, out) == (0, ""), err
    assert err.endswith("completed: 2 succeeded, 0 did not, of 2\n"), err


@MODES
async def test_list_pages_newest_first(
    mode: str, server: Running, database_url: str, tmp_path: Path
) -> None:
    where = target(mode, server, database_url)
    code, out, err = await fusillade("list", *where)
    assert (code, out, err) == (0, "", "no batches\n")

    ids = []
    for n in (1, 2, 3):
        source = tmp_path / f"in{n}.jsonl"
        source.write_bytes(jsonl(chat_line(f"c{i}") for i in range(n)))
        ids.append(await submit(source, where))
    newest_first = ids[::-1]

    code, out, err = await fusillade("list", *where)
    assert (code, err) == (0, ""), err
    header, *rows = out.splitlines()
    columns = ["ID", "STATUS", "DONE/TOTAL", "FAILED", "CREATED", "(UTC)", "ENDPOINT"]
    assert header.split() == columns
    assert [row.split()[0] for row in rows] == newest_first
    for row, total in zip(rows, (3, 2, 1), strict=True):
        cells = row.split()
        assert cells[2].endswith(f"/{total}")
        created = " ".join(cells[4:6])
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", created), row
        assert cells[6] == "/v1/chat/completions"
        assert cells[1] in ("validating", "in_progress", "finalizing", "completed")

    code, out, err = await fusillade("list", "--limit", "2", *where)
    assert code == 0, err
    assert [row.split()[0] for row in out.splitlines()[1:]] == newest_first[:2]
    assert err == f"more: fusillade list --after {newest_first[1]}\n"

    # the cursor in either form; the last page says nothing more
    for after in (newest_first[1], bare_uuid(newest_first[1])):
        code, out, err = await fusillade("list", "--limit", "2", "--after", after, *where)
        assert (code, err) == (0, ""), err
        assert [row.split()[0] for row in out.splitlines()[1:]] == newest_first[2:]

    code, out, err = await fusillade("list", "--limit", "1", "--json", *where)
    assert code == 0, err
    page = json.loads(out)
    assert (page["object"], page["has_more"]) == ("list", True)
    assert [b["id"] for b in page["data"]] == newest_first[:1]
    created = datetime.fromtimestamp(page["data"][0]["created_at"], UTC)
    assert " ".join(rows[0].split()[4:6]) == created.strftime("%Y-%m-%d %H:%M:%S")

    code, out, err = await fusillade("list", "--after", "batch_nope", *where)
    assert (code, out) == (1, ""), err
    assert "after" in err and "Traceback" not in err  # the cursor is named


async def test_list_limit_is_checked_before_anything(tmp_path: Path) -> None:
    for bad in ("0", "101", "x"):
        code, out, err = await fusillade("list", "--limit", bad, "--server", "http://127.0.0.1:1")
        assert (code, out) == (2, ""), err
        assert "expected a number from 1 to 100" in err


@MODES
async def test_every_command_takes_a_bare_uuid_and_prints_batch_ids(
    mode: str, server: Running, database_url: str, tmp_path: Path
) -> None:
    where = target(mode, server, database_url)
    source = tmp_path / "in.jsonl"
    source.write_bytes(jsonl(chat_line(f"c{i}") for i in range(2)))
    code, out, err = await fusillade("submit", str(source), "--wait", *where)
    assert code == 0, err
    batch = json.loads(out)
    batch_id = batch["id"]
    assert BATCH_ID.fullmatch(batch_id)
    assert re.fullmatch(r"file-[0-9a-f]{32}", batch["input_file_id"])
    assert re.fullmatch(r"file-[0-9a-f]{32}", batch["output_file_id"])
    assert err.startswith(f"submitted {batch_id}\n")

    for given in (batch_id, bare_uuid(batch_id), bare_uuid(batch_id).upper()):
        for command in (["status"], ["cancel"], ["retry"]):
            code, out, err = await fusillade(*command, given, *where)
            assert code == 0, (command, given, err)
            assert json.loads(out)["id"] == batch_id, (command, given)
        code, out, err = await fusillade("watch", given, *where)
        assert (code, out) == (0, ""), (given, err)
        output = tmp_path / "out.jsonl"
        code, out, err = await fusillade("results", given, "-o", str(output), *where)
        assert code == 0, (given, err)
        assert len(output.read_text().splitlines()) == 2

    code, out, err = await fusillade("status", "batch_" + "0" * 32, *where)
    assert (code, out) == (1, ""), err
    assert "Traceback" not in err


async def test_run_prints_the_batch_id_every_command_takes(
    mock_upstream: MockUpstream, database_url: str, tmp_path: Path
) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes(jsonl(chat_line(f"c{i}") for i in range(2)))
    args = ["run", str(source), "-o", str(tmp_path / "out.jsonl")]
    args += ["--upstream", mock_upstream.url, "--database-url", database_url]
    code, _, err = await fusillade(*args)
    assert code == 0, err
    [batch_id] = re.findall(r"^started batch (\S+): 2 requests$", err, re.M)
    assert BATCH_ID.fullmatch(batch_id), err

    code, _, err = await fusillade(*args)  # the same input and output: resumed
    assert code == 0, err
    assert re.search(rf"^resuming batch {batch_id}$", err, re.M), err

    code, out, err = await fusillade("status", batch_id, "--database-url", database_url)
    assert code == 0, err
    assert json.loads(out)["request_counts"] == {"total": 2, "completed": 2, "failed": 0}
