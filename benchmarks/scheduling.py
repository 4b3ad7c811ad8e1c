"""P9, P10, P11: scheduling (issue 13): rate budgets, fair shares between owners, deadlines.

Every measured thing is a child process running fusillade's library (``benchmarks.child``),
each against a mock-upstream of its own (``python -m fusillade mock-upstream``), on a fresh
database.

- P9: a mock-upstream enforcing ``--rpm``/``--tpm`` the way OpenAI does (429 with
  ``retry-after`` and ``x-ratelimit-*`` headers; a 1 s window at the per-second rate);
  fusillade is configured with no limit at all and learns them from the headers. Goodput is
  the batch's completed requests over the time from ``create_batch`` to the batch terminal;
  429s are counted by the mock (``GET /_stats``). Variants: ``budget_share`` 0.9 (the
  default) and 1.0; three daemons on one database (the child's and two more); and the naive
  run: fusillade as it was before issue 13 (commit ``NAIVE_COMMIT``, extracted with ``git
  archive``), which knows only concurrency and retries 429s after their ``retry-after``.
  Each variant runs once, whatever ``--runs`` says: one takes minutes.
- P10: owner ``a`` submits a large batch; once its requests flow, owner ``b`` submits a
  small one; B is timed to its end (A is left unfinished). Beside it, B alone with half the
  slots.
- P11: one owner submits a 24h batch, then a 1h batch; both are timed from the first
  submission.
"""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import (
    READY_LINE,
    REPO_ROOT,
    ChildFailed,
    Env,
    Row,
    Sizes,
    child_command,
    kill_and_reap,
    median,
    request_body,
    run_child,
    stop_and_reap,
)
from benchmarks.database import fresh_database, migrate
from benchmarks.upstream import Upstreams, spawn_mock

# The last commit of main before issue 13's scheduling: concurrency per model only.
NAIVE_COMMIT = "8e223ac"
P9_TARGET = "goodput >= 95% of the allowed rate, 429s < 1%"
P10_TARGET = "<= 2x B alone with half the slots"
P11_TARGET = "the 1h batch completes first"


@contextlib.contextmanager
def mock_upstream(flags: list[str]) -> Iterator[str]:
    """A mock-upstream of its own (fresh buckets and counters); yields its base URL."""
    proc, url = spawn_mock(flags)
    try:
        yield url
    finally:
        stop_and_reap(proc)


def mock_stats(url: str) -> dict[str, Any]:
    stats: dict[str, Any] = httpx.get(url + "/_stats", timeout=10).json()
    return stats


@contextlib.contextmanager
def background_child(name: str, params: dict[str, Any], timeout: float = 60) -> Iterator[None]:
    """``benchmarks.child NAME`` running until the block ends (it has printed READY)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            child_command(name, params), stdout=out, stderr=err, cwd=REPO_ROOT, text=True
        )
        try:
            _wait_ready(proc, out, err, name, timeout)
            yield
        except BaseException:
            kill_and_reap(proc)
            raise
        stop_and_reap(proc)


def _wait_ready(proc: subprocess.Popen[str], out: Any, err: Any, name: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        out.seek(0)
        if READY_LINE in out.read():
            return
        if proc.poll() is not None or time.monotonic() > deadline:
            err.seek(0)
            tail = "\n".join(err.read().strip().splitlines()[-10:])
            raise ChildFailed(f"child {name} did not get ready:\n{tail}")
        time.sleep(0.05)


def old_checkout(env: Env, commit: str) -> tuple[Path | None, str]:
    """fusillade (and its harness) at ``commit``, extracted into the work directory."""
    target = env.workdir / f"fusillade-{commit}"
    if target.exists():
        return target, ""
    archive = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "archive", commit], capture_output=True, check=False
    )
    if archive.returncode != 0:
        return None, f"not measured: git archive {commit} failed: {archive.stderr.decode()[:200]}"
    target.mkdir()
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    return target, ""


# ---------------------------------------------------------------------------------- P9


def _p9_run(
    env: Env,
    label: str,
    *,
    share: float | None,
    daemons: int = 1,
    old: Path | None = None,
) -> dict[str, Any]:
    """One P9 variant: a fresh mock and database; the batch in one child (with its daemon),
    ``daemons - 1`` more daemons beside it. Returns the child's result and the mock's stats."""
    s = env.sizes
    n = s.p9_requests
    flags = ["--rpm", str(s.p9_rpm), "--tpm", str(s.p9_tpm)]
    with mock_upstream(flags) as up, fresh_database(env.admin_url, label) as url:
        params: dict[str, Any] = {
            "database_url": url,
            "upstream": up,
            "n": n,
            "concurrency": s.p9_slots,
            "per_client": s.per_client,
        }
        if share is not None:
            params["budget_share"] = share
        with contextlib.ExitStack() as extra:
            if daemons > 1:
                migrate(url)  # once, before several processes open the database
                for _ in range(daemons - 1):
                    extra.enter_context(background_child("idle_daemon", params))
            if old is None:
                child = run_child("fusillade_batch", params)
            else:
                environ = {**os.environ, "PYTHONPATH": str(old)}
                child = run_child("fusillade_batch", params, cwd=old, env=environ)
        stats = mock_stats(up)
    result = dict(child.result)
    statuses = stats.get("by_status", {})
    result.update(
        n=n,
        goodput=result["completed"] / result["seconds"],
        sent=stats["total"],
        status_429=int(statuses.get("429", 0)),
        rate_limited=stats.get("rate_limited", {}),
        statuses=statuses,
        peak_in_flight=stats.get("peak_in_flight_total"),
        peak_rss_mib=child.peak_rss_mib,
    )
    return result


def _binding(s: Sizes) -> str:
    """Which limit binds: the mock counts a body's bytes / 4 plus its max_tokens (16)."""
    tokens = math.ceil(len(request_body(s.p9_requests // 2)) / 4) + 16
    by_tokens = s.p9_tpm / tokens
    which = "rpm" if s.p9_rpm <= by_tokens else "tpm"
    return f"{which} binds (about {tokens} tokens a request: tpm allows {by_tokens:,.0f} rpm)"


def _p9_row(env: Env, what: str, r: dict[str, Any], share: float, against: str) -> Row:
    s = env.sizes
    provider = s.p9_rpm / 60
    budget = provider * share
    allowed = provider if against == "provider" else budget
    share_429 = r["status_429"] / r["n"]
    row = Row("P9", what, P9_TARGET)
    row.result = (
        f"{r['goodput']:.2f} req/s goodput, 429s {100 * share_429:.2f}% of requests "
        f"({100 * r['status_429'] / max(1, r['sent']):.1f}% of HTTP answers)"
    )
    if r["completed"] < r["n"]:
        row.result = f"{r['completed']:,} of {r['n']:,} completed; " + row.result
    row.baseline = f"provider {provider:.0f} req/s, budget {budget:.0f} req/s (share {share:g})"
    row.ratio = f"{r['goodput'] / budget:.3f} of budget, {r['goodput'] / provider:.3f} of provider"
    row.met = r["goodput"] >= 0.95 * allowed and share_429 < 0.01
    row.notes = [
        f"target checked against the {against}'s rate ({allowed:.0f} req/s)",
        f"{r['completed']:,} of {r['n']:,} completed ({r['failed']:,} failed) in "
        f"{r['seconds']:.1f} s",
        f"{r['sent']:,} HTTP requests, {r['status_429']:,} answered 429 "
        f"(causes {r['rate_limited'] or 'none'})",
        f"mock-upstream --rpm {s.p9_rpm} --tpm {s.p9_tpm}, no latency; {_binding(s)}",
    ]
    row.raw = r
    return row


def p9(env: Env, up: Upstreams) -> list[Row]:
    s = env.sizes
    n, slots = s.p9_requests, s.p9_slots
    base = f"rate budget learned from headers, {n:,} requests, {slots} slots"
    rows = []
    env.log(f"P9: {n:,} requests against --rpm {s.p9_rpm}, budget_share 0.9 (default)")
    r = _p9_run(env, "p9", share=None)
    rows.append(_p9_row(env, base + ", budget_share 0.9 (default)", r, 0.9, "budget"))
    env.log("P9: the same with budget_share 1.0")
    r = _p9_run(env, "p9full", share=1.0)
    rows.append(_p9_row(env, base + ", budget_share 1.0", r, 1.0, "provider"))
    env.log("P9: three daemons on one database, budget_share 0.9")
    r = _p9_run(env, "p9three", share=None, daemons=3)
    three = _p9_row(env, base + " each, three daemons on one database", r, 0.9, "budget")
    rows.append(three)
    old, note = old_checkout(env, NAIVE_COMMIT)
    naive = Row(
        "P9", f"naive: fusillade before issue 13 ({NAIVE_COMMIT}), same job", "(informative)"
    )
    if old is None:
        naive.notes = [note]
    else:
        env.log(f"P9: naive, fusillade at {NAIVE_COMMIT}")
        r = _p9_run(env, "p9naive", share=None, old=old)
        naive = _p9_row(env, naive.measure, r, 0.9, "budget")
        naive.target, naive.met = "(informative)", None
        naive.notes[0] = (
            "concurrency only; 429s retried after their retry-after (6 attempts at most)"
        )
    rows.append(naive)
    return rows


# --------------------------------------------------------------------------------- P10


def p10(env: Env, up: Upstreams) -> list[Row]:
    s = env.sizes
    big, small, slots, latency = s.p10_big, s.p10_small, s.p10_slots, s.p10_latency
    url = up.slow_url(latency)
    together, alone, a_done = [], [], []
    for i in range(env.runs):
        env.log(f"P10 run {i + 1}/{env.runs}: A {big:,} then B {small}; B alone")
        base = {"upstream": url, "small": small, "per_client": s.per_client, "lead": 2 * slots}
        with fresh_database(env.admin_url, f"p10_{i}") as db:
            c = run_child(
                "fairness", {**base, "database_url": db, "big": big, "concurrency": slots}
            )
        together.append(c.result["seconds"])
        a_done.append(c.result["a_completed"])
        with fresh_database(env.admin_url, f"p10alone_{i}") as db:
            half = max(1, slots // 2)
            c = run_child("fairness", {**base, "database_url": db, "big": 0, "concurrency": half})
        alone.append(c.result["seconds"])
    ideal = -(-small // max(1, slots // 2)) * latency
    row = Row(
        "P10",
        f"fairness: owner A {big:,} requests, then owner B {small}; {slots} slots, "
        f"{latency * 1000:.0f} ms upstream: B's batch",
        P10_TARGET,
    )
    ratios = [t / a for t, a in zip(together, alone, strict=True)]
    row.result = f"{median(together):.2f} s"
    row.baseline = (
        f"B alone, {max(1, slots // 2)} slots: {median(alone):.2f} s (ideal {ideal:.2f} s)"
    )
    row.ratio = f"{median(ratios):.2f}x"
    row.met = median(ratios) <= 2.0
    row.notes = [
        f"upstream {up.describe(url)}",
        "per-run ratios " + ", ".join(f"{x:.2f}" for x in ratios),
        f"B submitted once A had {2 * slots} completed; A completed {median(a_done):,.0f} "
        "by B's end (then stopped)",
        "timed from B's create_batch to B terminal (polled every 20 ms)",
    ]
    row.raw = {"together": together, "alone": alone, "ratios": ratios, "a_completed": a_done}
    return [row]


# --------------------------------------------------------------------------------- P11


def p11(env: Env, up: Upstreams) -> list[Row]:
    s = env.sizes
    long, short, slots, latency = s.p11_long, s.p11_short, s.p11_slots, s.p11_latency
    url = up.slow_url(latency)
    longs, shorts = [], []
    for i in range(env.runs):
        env.log(f"P11 run {i + 1}/{env.runs}: {long:,} x 24h, then {short} x 1h")
        with fresh_database(env.admin_url, f"p11_{i}") as db:
            c = run_child(
                "deadline",
                {"database_url": db, "upstream": url, "long": long, "short": short,
                 "concurrency": slots, "per_client": s.per_client},
            )  # fmt: skip
        longs.append(c.result["long_seconds"])
        shorts.append(c.result["short_seconds"])
    row = Row(
        "P11",
        f"deadline: {long:,} requests x 24h, then {short} x 1h, same owner and model, "
        f"{slots} slots, {latency * 1000:.0f} ms upstream",
        P11_TARGET,
    )
    row.result = f"1h batch done at {median(shorts):.2f} s, 24h batch at {median(longs):.2f} s"
    row.ratio = f"{median(shorts) / median(longs):.2f}"
    row.met = all(a < b for a, b in zip(shorts, longs, strict=True))
    alone = short / slots * latency
    row.baseline = (
        f"1h batch alone, ideal {alone:.2f} s; both, ideal {(long + short) / slots * latency:.2f} s"
    )
    row.notes = [
        f"upstream {up.describe(url)}",
        "times from the 24h batch's create_batch (the 1h batch follows at once)",
        "runs (1h, 24h): "
        + ", ".join(f"({a:.2f}, {b:.2f})" for a, b in zip(shorts, longs, strict=True)),
    ]
    row.raw = {"short": shorts, "long": longs}
    return [row]
