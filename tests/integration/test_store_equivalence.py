"""The in-memory repository and the PostgreSQL one, held equal by a stateful test.

A hypothesis ``RuleBasedStateMachine`` applies the same random operations to a
``MemoryRepository`` and a ``PostgresRepository`` and checks that both answer the same:
files and batches (including refused and repeated creations, and creations with an
idempotency key: new, replayed, refused, or new again once the key expired), claims with
random allotments, results of every kind (including stale attempts, another daemon's
claims, and results that break a table constraint), releases, reclaims, cancels, sweeps,
retries, daemon life, escalations, retention purges, and a clock that moves, sometimes
past the batches' deadlines.

Ids: batches are created with explicit uuid7 ids, so both stores share them (and their
order); file and request ids differ between the stores and are mapped by file ordinal
and by (batch id, custom id), custom ids being unique within a file.

Checked after every step: each batch's requests (state, attempts, stamps, status,
reason) and its output and error lines, read without freezing anything. Batch views,
whose reading freezes settled batches, are compared by a rule of their own and at the
end, so the machine also explores batches that are settled but not frozen yet.

One database serves the whole test: each example starts by truncating the tables.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, TypeVar
from uuid import UUID

import attrs
import psycopg
import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from fusillade.core.attempts import ClaimedRequest, ResultKind
from fusillade.core.idempotency import IDEMPOTENCY_TTL, IdempotencyKey
from fusillade.core.models import (
    BatchView,
    Failure,
    FailureReason,
    FileRecord,
    RequestTemplate,
)
from fusillade.core.results import ResultLine
from fusillade.errors import FusilladeError, ValidationError
from fusillade.ids import uuid7
from fusillade.store.interface import (
    Allotment,
    BatchSpec,
    DaemonInfo,
    PurgeStats,
    Repository,
    RequestSummary,
)
from fusillade.store.memory import MemoryRepository
from fusillade.store.postgres import PostgresRepository

T = TypeVar("T")
Key = tuple[UUID, str]  # (batch id, custom id): the same request in both stores
Claim = tuple[UUID, Key, int]  # (daemon, request, attempt) of every claim ever made

OWNER = "alice"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
MODELS = ("a", "b", "c")
ENDPOINT = "/v1/chat/completions"
WINDOWS = {"1h": timedelta(hours=1), "2h": timedelta(hours=2)}
ZERO = UUID(int=0)
DAY = int(IDEMPOTENCY_TTL.total_seconds())  # a step of the clock that forgets every key
TRUNCATE = "TRUNCATE files, request_templates, batches, requests, daemons, idempotency_keys CASCADE"


def _error(exc: FusilladeError) -> tuple[str, str | None]:
    return type(exc).__name__, exc.param if isinstance(exc, ValidationError) else None


def _view(view: BatchView) -> BatchView:
    """A batch view without the store-made file ids."""
    record = attrs.evolve(view.record, input_file_id=ZERO, output_file_id=ZERO, error_file_id=ZERO)
    return attrs.evolve(view, record=record)


def _file(record: FileRecord) -> FileRecord:
    return attrs.evolve(record, id=ZERO)


def _label(n: int) -> str:
    return "0" if n == 0 else "1" if n == 1 else "2+"


class StoresAgree(RuleBasedStateMachine):
    pg: ClassVar[PostgresRepository]
    admin: ClassVar[psycopg.Connection[tuple[Any, ...]]]

    def __init__(self) -> None:
        super().__init__()
        self.admin.execute(TRUNCATE)
        self.stores: tuple[Repository, Repository] = (MemoryRepository(), self.pg)
        self.now = T0
        self.files: list[tuple[UUID, UUID]] = []  # (memory id, postgres id) per ordinal
        self.batches: list[UUID] = []
        self.ids: dict[Key, list[UUID]] = {}  # [memory id, postgres id]
        self.keys: tuple[dict[UUID, Key], dict[UUID, Key]] = ({}, {})
        self.daemons: list[UUID] = []
        self.claims: list[Claim] = []
        # each claim as each store returned it (memory, postgres)
        self.claimed: dict[Claim, list[ClaimedRequest]] = {}
        self.deadlines: dict[UUID, datetime] = {}
        self.next_batch_ms = int(T0.timestamp() * 1000)

    # ------------------------------------------------------------ plumbing

    def both(self, op: Callable[[Repository, int], T]) -> tuple[T, T] | None:
        """Run ``op`` on both stores: both succeed (results returned) or both raise the
        same kind of error (``None`` returned)."""
        outcomes: list[tuple[bool, Any]] = []
        for side, repo in enumerate(self.stores):
            try:
                outcomes.append((True, op(repo, side)))
            except FusilladeError as exc:
                outcomes.append((False, _error(exc)))
        (m_ok, m), (p_ok, p) = outcomes
        assert (m_ok, p_ok) == (True, True) or (m_ok, p_ok, m) == (False, False, p), (
            f"memory: {m!r}\npostgres: {p!r}"
        )
        return (m, p) if m_ok else None

    def same(self, op: Callable[[Repository, int], T]) -> T | None:
        """``both``, and the two results are equal."""
        got = self.both(op)
        if got is None:
            return None
        m, p = got
        assert m == p, f"memory: {m!r}\npostgres: {p!r}"
        return m

    def rid(self, key: Key, side: int) -> UUID:
        return self.ids[key][side]

    def learn_requests(self, batch_id: UUID) -> None:
        for side, repo in enumerate(self.stores):
            for r in repo.list_requests(OWNER, batch_id, limit=100).items:
                key = (batch_id, r.custom_id)
                self.keys[side][r.id] = key
                self.ids.setdefault(key, [ZERO, ZERO])[side] = r.id

    def requests_of(self, repo: Repository, batch_id: UUID) -> list[RequestSummary]:
        rows = repo.list_requests(OWNER, batch_id, limit=100).items
        return [attrs.evolve(r, id=ZERO) for r in rows]

    def results_of(self, repo: Repository, batch_id: UUID, *, errors: bool) -> list[ResultLine]:
        lines = list(repo.iter_results(OWNER, batch_id, errors=errors, page_size=3))
        finished = [line.finished_at for line in lines]
        assert finished == sorted(finished), "results must come in completion order"
        # ties on finished_at are ordered by request id, which differs between the stores
        return sorted(
            (attrs.evolve(line, request_id=ZERO) for line in lines), key=lambda x: x.custom_id
        )

    def results_by_line_of(self, repo: Repository, batch_id: UUID) -> list[ResultLine]:
        """``iter_results_by_line`` in pages of 2, its order kept (input order is the same
        in both stores), request ids blanked."""
        lines = repo.iter_results_by_line(OWNER, batch_id, page_size=2)
        return [attrs.evolve(line, request_id=ZERO) for line in lines]

    def _rows_in(self, states: tuple[str, ...]) -> Iterator[RequestSummary]:
        """The memory store's requests in ``states`` (to aim draws, not to check)."""
        for b in self.batches:
            yield from (
                r
                for r in self.stores[0].list_requests(OWNER, b, limit=100).items
                if r.state in states
            )

    def new_daemon(self) -> None:
        d = UUID(int=len(self.daemons) + 1)  # not random: draws depend on the order
        self.same(lambda repo, _: repo.register_daemon(DaemonInfo(d, "h", 1, "t"), now=self.now))
        self.daemons.append(d)

    def new_file(self, n: int, models: tuple[str, ...], bad_line: int | None) -> int:
        ordinal = len(self.files)
        templates = [
            RequestTemplate(
                custom_id=f"f{ordinal}-{i}",
                model=models[i % len(models)],
                body=json.dumps({"model": models[i % len(models)], "i": i}),
                path="/v1/embeddings" if i == bad_line else ENDPOINT,
                api_key="sk-test" if i == 1 else None,
            )
            for i in range(n)
        ]
        name = f"in{ordinal}"
        got = self.both(lambda repo, _: repo.create_file(OWNER, name, templates, now=self.now))
        assert got is not None
        m, p = got
        assert _file(m) == _file(p)
        self.files.append((m.id, p.id))
        return ordinal

    def new_batch(
        self,
        ordinal: int,
        window: str,
        owner: str = OWNER,
        metadata: dict[str, str] | None = None,
        batch_id: UUID | None = None,
        key: str | None = None,
    ) -> None:
        if batch_id is None:
            self.next_batch_ms += 1
            batch_id = uuid7(self.next_batch_ms)
        spec_id = batch_id
        # the stores' file ids differ: the fingerprint names the file by its ordinal
        fingerprint = f"batch:{ordinal}:{window}:{metadata}"
        idempotency = None if key is None else IdempotencyKey(key, fingerprint)

        def create(repo: Repository, side: int) -> BatchView:
            spec = BatchSpec(
                self.files[ordinal][side],
                ENDPOINT,
                window,
                WINDOWS[window],
                metadata,
                spec_id,
                idempotency,
            )
            return _view(repo.create_batch(owner, spec, now=self.now))

        view = self.same(create)
        event(f"create_batch: {'refused' if view is None else 'ok'}")
        if view is not None:
            batch_id = view.record.id  # a replayed key's batch
            event(f"create_batch with a key: {'new' if batch_id == spec_id else 'replayed'}")
            self.deadlines[batch_id] = view.record.expires_at
        if view is not None and batch_id not in self.batches:
            self.batches.append(batch_id)
            self.learn_requests(batch_id)

    def claim(self, d: UUID, allotments: list[Allotment]) -> list[Claim]:
        def claim(repo: Repository, side: int) -> list[tuple[Any, ...]]:
            got = repo.claim(d, allotments, now=self.now)
            for c in got:
                pair = self.claimed.setdefault((d, self.keys[side][c.id], c.attempt), [c, c])
                pair[side] = c
            return sorted(self._claimed(c, side) for c in got)

        got = self.same(claim)
        assert got is not None
        event(f"claim: {_label(len(got))} rows")
        claims = [(d, key, attempt) for key, attempt, *_ in got]
        self.claims += claims
        return claims

    def _claimed(self, c: ClaimedRequest, side: int) -> tuple[Any, ...]:
        key = self.keys[side][c.id]
        assert (c.batch_id, c.custom_id) == key
        return (key, c.attempt, c.budget_used, c.model, c.batch_expires_at, c.endpoint,
                c.method, c.path, c.body, c.api_key, c.daemon_id, c.claimed_at, c.started_at,
                c.not_before)  # fmt: skip

    def record(
        self, data: st.DataObject, d: UUID, picks: list[Claim], kind: ResultKind | None = None
    ) -> None:
        draws = [(claim, self._draw_result(data, claim[1], kind)) for claim in picks]

        def record(repo: Repository, side: int) -> tuple[int, list[Key]]:
            results = [self.claimed[claim][side].result(*fields) for claim, fields in draws]
            stats = repo.record_results(d, results)
            return stats.written, [self.keys[side][i] for i in stats.lost]

        got = self.same(record)
        if got is None:
            event("results: refused (a constraint)")
        else:
            event(f"results: {_label(got[0])} written, {_label(len(got[1]))} lost")

    def _draw_result(
        self, data: st.DataObject, key: Key, kind: ResultKind | None = None
    ) -> tuple[Any, ...]:
        """The arguments of ``ClaimedRequest.result``."""
        if kind is None:
            kinds = [*ResultKind, ResultKind.SUCCEEDED, ResultKind.CANCELLED]
            kind = data.draw(st.sampled_from(kinds), label="kind")
        broken = data.draw(st.integers(0, 49), label="broken") == 0  # breaks a constraint
        body = json.dumps({"for": key[1]})
        if kind is ResultKind.SUCCEEDED:
            tokens = data.draw(st.one_of(st.none(), st.integers(0, 9)), label="tokens")
            return (kind, self.now, 200, None if broken else body, None, None, tokens, tokens)
        if kind is ResultKind.RETRY:
            delay = data.draw(st.sampled_from([None, 0, 1, 30]), label="delay")
            not_before = None if delay is None else self.now + timedelta(seconds=delay)
            failure = Failure(FailureReason.TIMEOUT, "read timeout")
            if broken:  # text that PostgreSQL cannot hold: both stores refuse the flush
                body += data.draw(st.sampled_from(["\x00", "\ud800"]), label="unstorable")
            return (kind, self.now, 503, body, failure, not_before)
        if kind is ResultKind.FAILED:
            failure = Failure(FailureReason.HTTP_STATUS, "upstream answered 400", 400, body)
            # the exact bytes of a body that text cannot hold (core/bodies.py)
            raw = data.draw(st.sampled_from([None, b"\xff\x00 raw"]), label="raw body")
            fields = (kind, self.now, 400, body, None if broken else failure)
            return (*fields, None, None, None, False, raw)
        # an abort: its failure is the state table's (cancelled or expired)
        return (kind, self.now)

    # ---------------------------------------------------------------- rules

    @initialize(n=st.integers(1, 4), two_models=st.booleans())
    def start(self, n: int, two_models: bool) -> None:
        for _ in range(2):
            self.new_daemon()
        self.new_batch(self.new_file(n, ("a", "b") if two_models else ("a",), None), "1h")

    @rule(data=st.data(), slots=st.sampled_from([{"a": 1}, {"a": 3}, {"a": 2, "b": 2}]))
    def work(self, data: st.DataObject, slots: dict[str, int]) -> None:
        """A daemon claims, then reports on some of what it got (the main road)."""
        d = data.draw(st.sampled_from(self.daemons), label="daemon")
        claims = self.claim(d, self.allot(slots))
        if not claims and data.draw(st.booleans(), label="more work"):
            n = data.draw(st.integers(1, 4), label="lines")
            self.new_batch(self.new_file(n, ("a", "b"), None), "1h")
            claims = self.claim(d, self.allot(slots))
        if claims:
            some = st.lists(st.sampled_from(claims), min_size=1, unique=True)
            picks = data.draw(st.one_of(st.just(claims), some), label="report")
            self.record(data, d, picks)
        if data.draw(st.booleans(), label="late success"):
            self.late_success(data, d)

    def late_success(self, data: st.DataObject, d: UUID) -> None:
        """A success for an attempt ``d`` sent, after the row was canceled (billed work
        wins); sometimes after a read froze the batch, so its counts must be repaired."""
        canceled = {(r.batch_id, r.custom_id) for r in self._rows_in(("canceled",))}
        sent = [c for c in self.claims if c[0] == d and c[1] in canceled]
        event(f"late success: {_label(len(sent))} candidates")
        if sent:
            pick = data.draw(st.sampled_from(sent), label="canceled claim")
            b = pick[1][0]
            if data.draw(st.booleans(), label="read first"):
                self.same(lambda repo, _: _view(repo.get_batch(OWNER, b, now=self.now)))
            self.record(data, d, [pick], ResultKind.SUCCEEDED)

    def allot(self, slots: dict[str, int]) -> list[Allotment]:
        """``slots[model]`` rows of each model from every batch."""
        return [(b, m, n) for b in self.batches for m, n in slots.items()]

    @rule(data=st.data())
    def claim_only(self, data: st.DataObject) -> None:
        """A claim of drawn allotments: any batch (an unknown one too), any model (one no
        batch has too), repeated pairs, zero counts."""
        allotment = st.tuples(
            st.sampled_from([*self.batches, ZERO]),
            st.sampled_from((*MODELS, "z")),
            st.sampled_from([0, 1, 2, 3]),
        )
        allotments = data.draw(st.lists(allotment, min_size=1, max_size=4), label="allotments")
        self.claim(data.draw(st.sampled_from(self.daemons), label="daemon"), allotments)

    @rule(data=st.data())
    def escalate(self, data: st.DataObject) -> None:
        """Maintenance's deadline check: stamp some batches, clear others."""
        ids = st.lists(st.sampled_from([*self.batches, ZERO]), max_size=3)
        up = data.draw(ids, label="escalate")
        down = data.draw(ids, label="clear")
        self.same(lambda repo, _: repo.set_escalation(escalate=up, clear=down, now=self.now))
        self.same(lambda repo, _: repo.claimable_batches(now=self.now))

    @rule(data=st.data())
    def late_results(self, data: st.DataObject) -> None:
        """Results for any claim ever made, mostly the daemon's own: stale attempts,
        results after a release, reclaim, cancel or expiry, another daemon's rows."""
        if not self.claims:
            return
        d = data.draw(st.sampled_from(sorted({c[0] for c in self.claims})), label="daemon")
        own = [c for c in self.claims if c[0] == d]
        # the claims whose row is still this daemon's, in flight or canceled (where a
        # late success lands): where most of the interesting fences are
        held = {(r.batch_id, r.custom_id) for r in self._rows_in(("processing", "canceled"))}
        live = [c for c in own if c[1] in held] or own
        pool = data.draw(st.sampled_from([live, live, own, self.claims]), label="pool")
        picks = data.draw(
            st.lists(st.sampled_from(pool), min_size=1, max_size=4, unique_by=lambda c: c[1]),
            label="claims",
        )
        self.record(data, d, picks)

    @rule(
        data=st.data(),
        action=st.sampled_from(["new file"] * 3 + ["old file", "old id"] + ["cancel", "retry"] * 2),
    )
    def batch_admin(self, data: st.DataObject, action: str) -> None:
        """Create a batch (from a new or an old file, or again with an old id), or cancel
        or retry one; sometimes as another owner."""
        owner = data.draw(st.sampled_from([OWNER] * 6 + ["bob"]), label="owner")
        if action in ("cancel", "retry"):
            b = data.draw(st.sampled_from(self.batches), label="batch")
            if action == "cancel":
                view = self.same(lambda repo, _: _view(repo.cancel_batch(owner, b, now=self.now)))
            else:
                again = data.draw(st.booleans(), label="include cancelled")
                view = self.same(
                    lambda repo, _: _view(
                        repo.retry_batch(owner, b, now=self.now, include_cancelled=again)
                    )
                )
            event(f"{action}: {'refused' if view is None else view.status.value}")
            if view is not None:
                self.deadlines[b] = view.record.expires_at
            assert view is None or view.counts.is_consistent
            return
        window = data.draw(st.sampled_from(sorted(WINDOWS)), label="window")
        metadata = data.draw(st.sampled_from([None, {"k": "v"}]), label="metadata")
        key = data.draw(st.sampled_from([None, None, None, "k1"]), label="idempotency key")
        batch_id = None
        if action == "new file":
            n = data.draw(st.sampled_from([0, 1, 2, 3, 3, 4, 4, 5]), label="lines")
            models = data.draw(
                st.lists(st.sampled_from(MODELS), min_size=1, max_size=3, unique=True),
                label="models",
            )
            bad_line = data.draw(st.sampled_from([None] * 8 + [0, 2]), label="bad line")
            ordinal = self.new_file(n, tuple(models), bad_line)
        else:
            ordinal = data.draw(st.integers(0, len(self.files) - 1), label="file")
            if action == "old id":
                batch_id = data.draw(st.sampled_from(self.batches), label="batch")
        self.new_batch(ordinal, window, owner, metadata, batch_id, key)

    @rule(data=st.data())
    def keyed_batch(self, data: st.DataObject) -> None:
        """Create a batch with an idempotency key: new, replayed, refused (a different
        request under a live key) or new again (the key expired, see ``DAY``)."""
        ordinal = data.draw(st.integers(0, len(self.files) - 1), label="file")
        window = data.draw(st.sampled_from(sorted(WINDOWS)), label="window")
        metadata = data.draw(st.sampled_from([None, None, {"k": "v"}]), label="metadata")
        key = data.draw(st.sampled_from(["k1", "k2"]), label="idempotency key")
        self.new_batch(ordinal, window, OWNER, metadata, None, key)

    @rule(
        data=st.data(),
        action=st.sampled_from(
            [
                *("release", "reclaim dead", "reclaim timed out", "sweep", "sweep", "abort"),
                *("models", "new daemon", "register", "heartbeat", "stop", "files"),
                "forget keys",
                "finalize",
                "purge",
            ]
        ),
    )
    def maintenance(self, data: st.DataObject, action: str) -> None:
        """Daemon life and the periodic jobs."""
        max_attempts = data.draw(st.integers(1, 3), label="max attempts")
        before = self.now - timedelta(seconds=data.draw(st.sampled_from([0, 30, 300])))
        d = data.draw(st.sampled_from(self.daemons), label="daemon")
        if action == "release":
            keys = None
            some = data.draw(st.booleans(), label="some")
            if self.claims and some:
                pool = [c[1] for c in self.claims]
                keys = data.draw(st.lists(st.sampled_from(pool), max_size=3), label="requests")
            got = self.same(
                lambda repo, side: repo.release(
                    d,
                    now=self.now,
                    request_ids=None if keys is None else [self.rid(k, side) for k in keys],
                )
            )
            event(f"release: {_label(got or 0)}")
        elif action == "reclaim dead":
            stats = self.same(
                lambda repo, _: repo.reclaim_dead(
                    now=self.now, stale_before=before, max_attempts=max_attempts
                )
            )
            assert stats is not None
            event(f"reclaim dead: {_label(stats.requeued)} requeued, {_label(stats.failed)} failed")
        elif action == "reclaim timed out":
            stats = self.same(
                lambda repo, _: repo.reclaim_timed_out(
                    now=self.now, claimed_before=before, max_attempts=max_attempts
                )
            )
            assert stats is not None
            event(f"reclaim timed out: {_label(stats.requeued)}, {_label(stats.failed)}")
        elif action == "sweep":
            event(f"sweep: {_label(self.same(lambda repo, _: repo.sweep(now=self.now)) or 0)}")
        elif action == "abort":
            ids = data.draw(st.lists(st.sampled_from([*self.batches, ZERO]), max_size=4))
            self.same(lambda repo, _: repo.batches_to_abort(ids, now=self.now))
        elif action == "models":
            self.same(lambda repo, _: repo.claimable_batches(now=self.now))
        elif action == "new daemon":
            self.new_daemon()
        elif action == "register":
            info = DaemonInfo(d, "h", 1, "t")
            self.same(lambda repo, _: repo.register_daemon(info, now=self.now))
        elif action == "heartbeat":
            self.same(lambda repo, _: repo.heartbeat(d, now=self.now))
        elif action == "stop":
            self.same(lambda repo, _: repo.stop_daemon(d, now=self.now))
        elif action == "forget keys":
            forgotten = self.same(
                lambda repo, _: repo.forget_idempotency_keys(now=self.now, limit=1)
            )
            event(f"forget keys: {_label(forgotten or 0)}")
        elif action == "finalize":  # batches that ended unread are frozen, events written
            got = self.same(
                lambda repo, _: len(
                    [repo.get_batch(None, b, now=self.now) for b in repo.settled_batches()]
                )
            )
            event(f"finalize: {_label(got or 0)}")
        elif action == "purge":
            # finished batches' requests and stopped daemons older than `before`, the
            # files past their time; until done (the chunks may split differently)
            def purge(repo: Repository, _: int) -> PurgeStats:
                total = PurgeStats()
                while True:
                    step = repo.purge(now=self.now, finished_before=before, stopped_before=before)
                    total += step
                    if not step.more:
                        return attrs.evolve(total, more=False)

            purged = self.same(purge)
            event(f"purge: {_label(purged.requests if purged else 0)} requests")
        else:
            self.compare_files(data.draw(st.integers(0, len(self.files) - 1), label="file"))

    def compare_files(self, ordinal: int) -> None:
        self.same(lambda repo, side: list(repo.iter_templates(OWNER, self.files[ordinal][side])))
        self.same(lambda repo, side: _file(repo.get_file(OWNER, self.files[ordinal][side])))
        self.same(
            lambda repo, _: sorted(
                (_file(f) for f in repo.list_files(OWNER, limit=1000).items),
                key=lambda f: (f.filename, f.purpose),
            )
        )

    @rule(data=st.data(), step=st.sampled_from([1, 1, 5, 30, 60, 300, 600, 1800, 3600, DAY, "due"]))
    def advance_time(self, data: st.DataObject, step: int | str) -> None:
        """Move the clock on by some seconds, or to (just before, at, or just after) the
        next batch deadline, where the ``<`` versus ``<=`` of every rule is tested."""
        if isinstance(step, int):
            self.now += timedelta(seconds=step)
            return
        due = sorted(t for t in self.deadlines.values() if t >= self.now - timedelta(seconds=1))
        if not due:
            return
        offset = data.draw(st.sampled_from([-1, 0, 0, 1]), label="offset")
        self.now = max(self.now, due[0] + timedelta(seconds=offset))
        # What a daemon asks there (the cancel watcher, the claim loop, maintenance), so
        # each is checked at the deadline itself and not only when a later rule happens
        # to run before the clock moves on. The daemon's tests in virtual time
        # (tests/runtime/test_virtual_time.py) rely on these answers at the deadline.
        self.same(lambda repo, _: repo.batches_to_abort(self.batches, now=self.now))
        self.same(lambda repo, _: repo.claimable_batches(now=self.now))
        if data.draw(st.booleans(), label="sweep at the deadline"):
            self.same(lambda repo, _: repo.sweep(now=self.now))

    @rule()
    def compare_batches(self) -> None:
        """Read every batch (which freezes the settled ones) and its result lines, and
        list the batches in pages. First the settled ones maintenance would freeze."""
        self.same(lambda repo, _: repo.settled_batches())
        for batch_id in self.batches:
            self.compare_batch(batch_id)

        def pages(repo: Repository, _: int) -> list[tuple[BatchView, ...]]:
            out, after = [], None
            while True:
                page = repo.list_batches(OWNER, now=self.now, after=after, limit=2)
                out.append(tuple(_view(v) for v in page.items))
                if not page.has_more:
                    return out
                after = page.items[-1].record.id

        self.same(pages)
        self.compare_status()

    def compare_status(self) -> None:
        """The status page's snapshot, for every owner and for one, with limits small
        enough to cut the batches; failures with their request's key (the ids differ),
        as a multiset (ties on finished_at are ordered by those ids)."""

        def status(repo: Repository, side: int, owner: str | None) -> tuple[Any, ...]:
            since = self.now - timedelta(minutes=1)
            snapshot = repo.status(owner, now=self.now, since=since, batches=2, failures=1000)
            failures = sorted(
                (self.keys[side][f.request_id], attrs.evolve(f, request_id=ZERO))
                for f in snapshot.failures
            )
            views = tuple(_view(v) for v in snapshot.batches)
            return snapshot.now, views, snapshot.models, failures

        self.same(lambda repo, side: status(repo, side, None))
        self.same(lambda repo, side: status(repo, side, OWNER))
        self.same(lambda repo, side: status(repo, side, "nobody"))

    def compare_batch(self, b: UUID) -> None:
        self.same(lambda repo, _: self.results_of(repo, b, errors=False))
        self.same(lambda repo, _: self.results_of(repo, b, errors=True))
        by_line = self.same(lambda repo, _: self.results_by_line_of(repo, b))
        if by_line is not None:
            lines = [int(line.custom_id.rsplit("-", 1)[1]) for line in by_line]
            assert lines == sorted(lines), "results by line must come in input order"
            memory = self.stores[0]
            ended = self.results_of(memory, b, errors=False) + self.results_of(
                memory, b, errors=True
            )
            assert sorted(by_line, key=lambda x: x.custom_id) == sorted(
                ended, key=lambda x: x.custom_id
            ), "the ordered read has the lines of the completion-order ones"
        self.same(lambda repo, _: repo.batch_trouble(OWNER, b, now=self.now))
        self.same(lambda repo, _: repo.error_kinds(OWNER, b, top=3))
        view = self.same(lambda repo, _: _view(repo.get_batch(OWNER, b, now=self.now)))
        assert view is not None
        assert view.counts.is_consistent, view
        frozen = "frozen" if view.record.frozen_counts is not None else "live"
        event(f"batch read: {view.status.value}, {frozen}")

    @invariant()
    def requests_agree(self) -> None:
        """Every request is the same (read without freezing anything)."""
        for batch_id in self.batches:
            self.requests_agree_in(batch_id)

    @invariant()
    def webhook_events_agree(self) -> None:
        """Each store wrote the same number of webhook events (one per terminal
        transition), for each owner."""
        for owner in (OWNER, "bob"):
            self.same(lambda repo, _, o=owner: repo.webhook_outbox_pending([o]))

    def requests_agree_in(self, b: UUID) -> None:
        self.same(lambda repo, _: self.requests_of(repo, b))

    def teardown(self) -> None:
        self.compare_batches()


@pytest.fixture
def shared_stores(database_url: str) -> Iterator[None]:
    with (
        PostgresRepository(database_url, max_size=2) as pg,
        psycopg.connect(database_url, autocommit=True) as admin,
    ):
        StoresAgree.pg = pg
        StoresAgree.admin = admin
        yield


@pytest.mark.usefixtures("shared_stores")
def test_memory_and_postgres_stores_agree() -> None:
    run_state_machine_as_test(
        StoresAgree,
        settings=settings(
            settings.default,
            # a fraction of the profile's examples: every step runs several statements
            max_examples=max(10, settings().max_examples * 2 // 5),
            stateful_step_count=50,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
