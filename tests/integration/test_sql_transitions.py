"""Every row change PostgreSQL makes to ``requests`` is a transition of the state table.

The set-based writes stay in SQL (claim, sweep and expiry, reclaim, release,
retry_batch, cancel_batch's inline sweep); this test proves they are the table's
transitions. record_results writes what the core computed (``step``, as a
compare-and-set); this test also proves the fence lets it write only from the states
the event may come from. A test-only trigger (tests/sql/record_transitions.sql) logs every
inserted and updated row: its states before and after, the columns that changed and
the row as it was. A hypothesis ``RuleBasedStateMachine`` drives random operations
through the real ``PostgresRepository``: batches, claims by several daemons (also two
at once, in two threads), results of every kind (including stale ones and late
successes after a cancel), cancels, sweeps, expiries, manual retries, daemons that stop
heartbeating or stop, timed-out rows and graceful releases. After every step each new
log row is checked against ``TRANSITIONS``:

- an insert is a ``pending`` row with no attempt;
- an update whose state changed is explained by one transition of the table from the
  old state to the new one (or by claim-then-start, which claim.sql writes at once):
  its guard holds, every changed column stores a field that transition updates, and the
  updates whose value the log can check (clear, increment, copy, a constant reason)
  hold;
- an update that keeps the state (retry_batch moving an unsettled row to its batch's
  new deadline) changes no column of the state machine.

Columns map to ``Request`` fields (``COLUMN_FIELDS``): ``failure_reason`` and
``failure_message`` store ``failure``; the body's JSON flag, raw bytes and the token
counts are details of the stored response, so they belong to whatever writes
``response_body``. ``batch_expires_at`` is a copy of the batch's deadline, outside the
state machine. A column in neither map fails the test until it is classified.

One database serves the test; each example starts by truncating the tables.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar
from uuid import UUID

import psycopg
import pytest
from helpers import claim_by_model
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)
from psycopg.rows import dict_row

from fusillade.core.attempts import AttemptResult, ClaimedRequest, ResultKind
from fusillade.core.models import Failure, FailureReason, RequestState, RequestTemplate
from fusillade.core.transitions import (
    TRANSITIONS,
    Clear,
    Const,
    CopyOf,
    EventKind,
    Increment,
    SetNow,
    Transition,
)
from fusillade.errors import FusilladeError
from fusillade.ids import uuid7
from fusillade.store.interface import BatchSpec, DaemonInfo
from fusillade.store.postgres import PostgresRepository

RECORDER = Path(__file__).resolve().parents[1] / "sql" / "record_transitions.sql"
OWNER = "alice"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
ENDPOINT = "/v1/chat/completions"
WINDOW = timedelta(hours=1)
TRUNCATE = "TRUNCATE files, request_templates, batches, requests, daemons, transition_log CASCADE"

# requests column -> the Request field it stores
COLUMN_FIELDS = {
    "state": "state",
    "attempts": "attempts",
    "budget_base": "budget_base",
    "not_before": "not_before",
    "daemon_id": "daemon_id",
    "claimed_at": "claimed_at",
    "started_at": "started_at",
    "finished_at": "finished_at",
    "response_status": "response_status",
    "response_body": "response_body",
    "failure_reason": "failure",
    "failure_message": "failure",
    # details of the stored response, written with it
    "response_body_json": "response_body",
    "response_body_raw": "response_body",
    "input_tokens": "response_body",
    "output_tokens": "response_body",
    # the position of a completed line for followers (0012), taken as the state changes
    "result_xid": "state",
}
# copies of the batch's values: any write may move them, no state depends on them
OUTSIDE_THE_MACHINE = frozenset({"batch_expires_at"})
# the columns whose value a field's update is checked against
FIELD_COLUMNS = {"failure": ("failure_reason", "failure_message")}
# claim.sql claims and starts in one write (the table's note on claimed -> processing)
CLAIM_AND_START = (
    TRANSITIONS[(RequestState.PENDING, EventKind.CLAIM)],
    TRANSITIONS[(RequestState.CLAIMED, EventKind.START)],
)
Path_ = tuple[Transition, ...]
Key = tuple[UUID, str]  # a request: (batch id, custom id)
Claim = tuple[UUID, Key, int]  # (daemon, request, attempt)


def _paths(old: RequestState, new: RequestState) -> list[tuple[str, Path_]]:
    """The ways the table goes from ``old`` to ``new`` in one write."""
    found: list[tuple[str, Path_]] = [
        (kind.value, (rule_,))
        for (src, kind), rule_ in TRANSITIONS.items()
        if src is old and rule_.target is new
    ]
    if (old, new) == (RequestState.PENDING, RequestState.PROCESSING):
        found.append(("claim+start", CLAIM_AND_START))
    return found


def _why_not(path: Path_, changed: set[str], old: dict[str, Any], new: dict[str, Any]) -> str:
    """Why ``path`` does not explain this write, or '' when it does."""
    fields = frozenset().union(*(t.fields for t in path))
    stray = {c for c in changed if COLUMN_FIELDS[c] not in fields}
    if stray:
        return f"changes {sorted(stray)}, which it does not update"
    first = path[0]
    if first.guard is not None and old["started_at"] is None:
        # the only guard (was_sent): the late success of an attempt that was sent
        return f"guard {first.guard.__name__} does not hold"
    for t in path:
        for field, update in t.updates.items():
            cols = FIELD_COLUMNS.get(field, (field,))
            values = [new[c] for c in cols]
            if isinstance(update, Clear) and any(v is not None for v in values):
                return f"{field} should be cleared, is {values}"
            if isinstance(update, SetNow) and values[0] is None:
                return f"{field} should be set, is null"
            if isinstance(update, Increment) and new[field] != old[field] + update.by:
                return f"{field} should be {old[field]} + {update.by}, is {new[field]}"
            if isinstance(update, CopyOf) and new[field] != old[update.field]:
                return f"{field} should be the old {update.field} {old[update.field]}"
            const = update.value if isinstance(update, Const) else None
            if isinstance(const, Failure) and new["failure_reason"] != const.reason.value:
                return f"failure should have reason {const.reason.value}"
    return ""


def check_write(op: str, old_state: str | None, new_state: str, changed: list[str],
                old: dict[str, Any] | None, new: dict[str, Any]) -> str:  # fmt: skip
    """'' when the table allows this logged write, else what is wrong with it."""
    if op == "INSERT":
        ok = new_state == "pending" and new["attempts"] == 0 and new["budget_base"] == 0
        return "" if ok else f"inserted as {new_state} with attempts {new['attempts']}"
    unknown = set(changed) - set(COLUMN_FIELDS) - OUTSIDE_THE_MACHINE
    if unknown:
        return f"changes {sorted(unknown)}: outside the state machine and not a batch copy"
    machine = set(changed) - OUTSIDE_THE_MACHINE
    assert old is not None and old_state is not None
    if old_state == new_state:
        return f"keeps {old_state} but changes {sorted(machine)}" if machine else ""
    paths = _paths(RequestState(old_state), RequestState(new_state))
    if not paths:
        return "no transition of the table"
    reasons = [f"{name}: {_why_not(p, machine, old, new)}" for name, p in paths]
    return "" if any(r.endswith(": ") for r in reasons) else "; ".join(reasons)


SEEN: set[tuple[str, str]] = set()


class SqlFollowsTheTable(RuleBasedStateMachine):
    pg: ClassVar[PostgresRepository]
    admin: ClassVar[psycopg.Connection[dict[str, Any]]]

    def __init__(self) -> None:
        super().__init__()
        self.admin.execute(TRUNCATE)
        self.now = T0
        self.daemons: list[UUID] = []
        self.batches: list[UUID] = []
        # (daemon, request, attempt); requests by (batch id, custom id), not by their
        # random ids, so that the draws do not depend on them
        self.claims: list[Claim] = []
        self.ids: dict[Key, UUID] = {}
        self.claimed: dict[Claim, ClaimedRequest] = {}
        self.next_ms = int(T0.timestamp() * 1000)
        self.files = 0
        self.seq = 0

    # ------------------------------------------------------------ plumbing

    def new_daemon(self) -> None:
        d = UUID(int=len(self.daemons) + 1)
        self.pg.register_daemon(DaemonInfo(d, "h", 1, "t"), now=self.now)
        self.daemons.append(d)

    def new_batch(self, n: int, models: tuple[str, ...]) -> None:
        self.files += 1
        templates = [
            RequestTemplate(
                custom_id=f"f{self.files}-{i}",
                model=models[i % len(models)],
                body=json.dumps({"i": i}),
            )
            for i in range(n)
        ]
        f = self.pg.create_file(OWNER, f"in{self.files}", templates, now=self.now)
        self.next_ms += 1
        spec = BatchSpec(f.id, ENDPOINT, "1h", WINDOW, None, uuid7(self.next_ms))
        self.batches.append(self.pg.create_batch(OWNER, spec, now=self.now).record.id)

    def claim(self, d: UUID, slots: dict[str, int]) -> list[Claim]:
        got = []
        for c in claim_by_model(self.pg, d, slots, now=self.now):
            key = (c.batch_id, c.custom_id)
            self.ids[key] = c.id
            self.claimed[(d, key, c.attempt)] = c
            got.append((d, key, c.attempt))
        return sorted(got)

    def result(self, data: st.DataObject, claim: Claim,
               kind: ResultKind | None = None) -> AttemptResult:  # fmt: skip
        """A result of ``claim``'s attempt, as its daemon's core computes it."""
        if kind is None:
            kind = data.draw(st.sampled_from(list(ResultKind)), label="kind")
        c = self.claimed[claim]
        body = json.dumps({"for": claim[1][1]})
        if kind is ResultKind.SUCCEEDED:
            tokens = data.draw(st.one_of(st.none(), st.integers(0, 9)), label="tokens")
            return c.result(kind, self.now, 200, body, None, None, tokens, tokens, True)
        if kind is ResultKind.RETRY:
            delay = data.draw(st.sampled_from([None, 0, 30]), label="delay")
            not_before = None if delay is None else self.now + timedelta(seconds=delay)
            failure = Failure(FailureReason.HTTP_STATUS, "upstream answered 503", 503, body)
            return c.result(kind, self.now, 503, body, failure, not_before)
        if kind is ResultKind.FAILED:
            failure = Failure(FailureReason.HTTP_STATUS, "upstream answered 400", 400, body)
            raw = data.draw(st.sampled_from([None, b"\xff raw"]), label="raw body")
            return c.result(kind, self.now, 400, body, failure, body_raw=raw)
        return c.result(kind, self.now)

    def record(self, data: st.DataObject, d: UUID, picks: list[Claim],
               kind: ResultKind | None = None) -> None:  # fmt: skip
        results = [self.result(data, claim, kind) for claim in picks]
        stats = self.pg.record_results(d, results)
        event(f"results: {stats.written} written, {len(stats.lost)} lost")

    def in_state(self, *states: str) -> set[UUID]:
        rows = self.admin.execute(
            "SELECT id FROM requests WHERE state = ANY(%s)", (list(states),)
        ).fetchall()
        return {r["id"] for r in rows}

    def held(self, c: Claim, ids: set[UUID]) -> bool:
        return self.ids[c[1]] in ids

    # ---------------------------------------------------------------- rules

    @initialize(n=st.integers(1, 4), daemons=st.integers(1, 3))
    def start(self, n: int, daemons: int) -> None:
        for _ in range(daemons):
            self.new_daemon()
        self.failed_and_retried()
        self.new_batch(n, ("a", "b"))

    def failed_and_retried(self) -> None:
        """One request of its own model (no rule claims it) is retried after a 503, then
        fails and is retried by hand, so every example writes processing -> pending and
        processing -> failed -> pending, which the random rules reach only when they
        happen to draw a retry, or a batch settles with a failure before a retry."""
        self.new_batch(1, ("z",))
        b = self.batches.pop()
        (c,) = claim_by_model(self.pg, self.daemons[0], {"z": 1}, now=self.now)
        failure = Failure(FailureReason.HTTP_STATUS, "upstream answered 503")
        retry = c.result(ResultKind.RETRY, self.now, 503, "{}", failure, self.now)
        assert self.pg.record_results(self.daemons[0], [retry]).written == 1
        (c,) = claim_by_model(self.pg, self.daemons[0], {"z": 1}, now=self.now)
        failure = Failure(FailureReason.HTTP_STATUS, "upstream answered 400")
        failed = c.result(ResultKind.FAILED, self.now, 400, "{}", failure)
        assert self.pg.record_results(self.daemons[0], [failed]).written == 1
        self.pg.retry_batch(OWNER, b, now=self.now)

    @rule(n=st.integers(1, 4), models=st.sampled_from([("a",), ("a", "b")]))
    def create(self, n: int, models: tuple[str, ...]) -> None:
        self.new_batch(n, models)

    @rule(data=st.data(), slots=st.sampled_from([{"a": 1}, {"a": 3}, {"a": 2, "b": 2}]))
    def work(self, data: st.DataObject, slots: dict[str, int]) -> None:
        """A daemon claims and reports on some of what it got."""
        d = data.draw(st.sampled_from(self.daemons), label="daemon")
        claims = self.claim(d, slots)
        self.claims += claims
        if claims:
            some = st.lists(st.sampled_from(claims), min_size=1, unique=True)
            self.record(data, d, data.draw(st.one_of(st.just(claims), some), label="report"))

    @rule()
    def concurrent(self) -> None:
        """Two daemons claim at once in two threads (SKIP LOCKED), then each reports a
        success for all it got. Which daemon gets which row is up to PostgreSQL, so
        nothing here is drawn and these claims are not kept for later rules. The slots
        exceed every backlog here, so together they take every due row whoever wins: the
        state after this rule is the same in every run (hypothesis replays examples and
        requires the same draws, which later rules make from the database's state)."""
        if len(self.daemons) < 2:
            self.new_daemon()
        pair = self.daemons[:2]
        got: dict[UUID, list[Claim]] = {}
        barrier = threading.Barrier(2)

        def run(d: UUID) -> None:
            barrier.wait(timeout=10)
            got[d] = self.claim(d, {"a": 1000, "b": 1000})

        threads = [threading.Thread(target=run, args=(d,)) for d in pair]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        mine = {d: got.get(d, []) for d in pair}
        keys = [c[1] for cs in mine.values() for c in cs]
        assert len(keys) == len(set(keys)), "two daemons claimed one row"
        for d, cs in mine.items():
            ok = [self.claimed[c].result(ResultKind.SUCCEEDED, self.now, 200, "{}") for c in cs]
            assert self.pg.record_results(d, ok).written == len(ok)

    @rule(data=st.data())
    def late_results(self, data: st.DataObject) -> None:
        """Results for any claim ever made: stale attempts, other daemons' rows, results
        after a release, reclaim, cancel or expiry, late successes of canceled rows."""
        if not self.claims:
            return
        held = self.in_state("processing", "canceled")
        live = [c for c in self.claims if self.held(c, held)] or self.claims
        pool = data.draw(st.sampled_from([live, live, self.claims]), label="pool")
        picks = data.draw(
            st.lists(st.sampled_from(pool), min_size=1, max_size=3, unique_by=lambda c: c[1]),
            label="claims",
        )
        d = data.draw(st.sampled_from(sorted({c[0] for c in picks})), label="daemon")
        kind = data.draw(st.sampled_from([None, ResultKind.SUCCEEDED]), label="kind")
        self.record(data, d, picks, kind)

    @rule(data=st.data(), action=st.sampled_from(["cancel", "retry", "retry all", "read"]))
    def batch_admin(self, data: st.DataObject, action: str) -> None:
        b = data.draw(st.sampled_from(self.batches), label="batch")
        try:
            if action == "cancel":
                view = self.pg.cancel_batch(OWNER, b, now=self.now)
            elif action == "read":  # freezes a settled batch
                view = self.pg.get_batch(OWNER, b, now=self.now)
            else:
                view = self.pg.retry_batch(
                    OWNER, b, now=self.now, include_cancelled=action == "retry all"
                )
        except FusilladeError as exc:
            event(f"{action}: refused ({type(exc).__name__})")
            return
        event(f"{action}: {view.status.value}")

    @rule(
        data=st.data(),
        action=st.sampled_from(
            [
                *("release", "release some", "reclaim dead", "reclaim timed out"),
                *("sweep", "sweep", "heartbeat", "stop", "new daemon"),
            ]
        ),
    )
    def maintenance(self, data: st.DataObject, action: str) -> None:
        max_attempts = data.draw(st.integers(1, 3), label="max attempts")
        before = self.now - timedelta(seconds=data.draw(st.sampled_from([0, 30, 300])))
        d = data.draw(st.sampled_from(self.daemons), label="daemon")
        if action == "release":
            self.pg.release(d, now=self.now)
        elif action == "release some" and self.claims:
            keys = data.draw(st.lists(st.sampled_from([c[1] for c in self.claims]), max_size=3))
            self.pg.release(d, now=self.now, request_ids=[self.ids[k] for k in keys])
        elif action == "reclaim dead":
            self.pg.reclaim_dead(now=self.now, stale_before=before, max_attempts=max_attempts)
        elif action == "reclaim timed out":
            self.pg.reclaim_timed_out(
                now=self.now, claimed_before=before, max_attempts=max_attempts
            )
        elif action == "sweep":
            self.pg.sweep(now=self.now)
        elif action == "heartbeat":
            self.pg.heartbeat(d, now=self.now)
        elif action == "stop":
            self.pg.stop_daemon(d, now=self.now)
        elif action == "new daemon":
            self.new_daemon()

    @rule(step=st.sampled_from([1, 30, 300, 1800, 3601]))
    def advance_time(self, step: int) -> None:
        """Move the clock on; 3601 s passes every deadline a batch had when created."""
        self.now += timedelta(seconds=step)

    # ------------------------------------------------------------- the check

    @invariant()
    def every_write_is_a_transition(self) -> None:
        rows = self.admin.execute(
            "SELECT * FROM transition_log WHERE seq > %s ORDER BY seq", (self.seq,)
        ).fetchall()
        wrong = []
        for r in rows:
            self.seq = r["seq"]
            SEEN.add((r["old_state"] or "insert", r["new_state"]))
            if r["old_state"] is not None and r["old_state"] != r["new_state"]:
                event(f"write: {r['old_state']} -> {r['new_state']}")
            why = check_write(
                r["op"], r["old_state"], r["new_state"], r["changed"], r["old_row"], r["new_row"]
            )
            if why:
                wrong.append(f"{r['old_state']} -> {r['new_state']} {r['changed']}: {why}")
        assert not wrong, "writes the state table does not allow:\n" + "\n".join(wrong)


@pytest.fixture
def recorded_store(database_url: str) -> Iterator[None]:
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as admin:
        admin.execute(RECORDER.read_text(encoding="utf-8"))
        with PostgresRepository(database_url, max_size=3) as pg:
            SqlFollowsTheTable.pg = pg
            SqlFollowsTheTable.admin = admin
            yield


@pytest.mark.usefixtures("recorded_store")
def test_every_sql_write_is_a_table_transition() -> None:
    SEEN.clear()
    run_state_machine_as_test(
        SqlFollowsTheTable,
        settings=settings(
            settings.default,
            # explicit, whatever the profile: ~0.15 s per example (ci: 100 examples, ~15 s)
            max_examples=25 if settings().max_examples < 300 else 100,
            stateful_step_count=30,
            deadline=None,
            # one bug, shrunk: a second search would outlast the test timeout
            report_multiple_bugs=False,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
    # not vacuous: the writes of the main road were all seen and checked
    assert {
        ("insert", "pending"),
        ("pending", "processing"),
        ("processing", "completed"),
        ("processing", "pending"),
        ("processing", "failed"),
        ("pending", "canceled"),
        ("failed", "pending"),
    } <= SEEN, SEEN
