"""Free slots shared between owners and their batches: weighted, work-conserving, by priority.

Theory of operation
-------------------
Each model belongs to one group (its upstream; ``group_of``), so groups are independent.
Within a group, slots are handed out one at a time (in bulk where the order is already
decided, which gives the same answer faster):

1. the owner with the lowest ``load / weight`` gets the next slot (ties: owner name),
   where an owner's load is its in-flight requests in the group plus what it has been
   allotted so far; only owners with an eligible claimable compete (one whose model and
   group both have a free slot left);
2. within the owner, the best priority class among its eligible claimables: escalated
   (will miss its deadline at the current rate) before not, then the shorter completion
   window;
3. within that class, the (batch, model) with the lowest in flight plus allotted (ties:
   earliest ``expires_at``, then ``batch_id``).

This stops only when no claimable is eligible: work-conserving (an owner alone gets
everything that is free).

Fairness bound: an owner ``a`` got its last slot at a time when its ``load / weight``
was the lowest of the eligible owners; loads only grow and eligibility is only lost. So
for any owner ``b`` still eligible at the end, ``L_a / w_a <= L_b / w_b + 1 / w_a``
(``L``: final load): owners differ by at most one slot of the favoured owner.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from uuid import UUID

import attrs

_UNLIMITED = 1 << 62


@attrs.frozen
class Claimable:
    """A (batch, model) with requests waiting, as one daemon sees it."""

    batch_id: UUID
    model: str
    owner: str
    expires_at: datetime
    window: timedelta
    """The batch's completion window."""
    escalated: bool
    """It will miss its deadline at the current rate."""
    in_flight: int
    """This daemon's requests of this (batch, model) in flight."""


@attrs.frozen
class Allotment:
    batch_id: UUID
    model: str
    count: int


def priority_class(c: Claimable) -> tuple[bool, timedelta]:
    """Lower is served first: escalated before not, then the shorter window."""
    return (not c.escalated, c.window)


# A claimable in its class's heap: (load, expires_at, batch_id, index in claimables).
_Entry = tuple[int, datetime, UUID, int]


@attrs.define
class _Owner:
    name: str
    weight: float
    load: int
    classes: list[list[_Entry]]  # heaps, best class first


def allocate(
    claimables: Sequence[Claimable],
    *,
    model_free: Mapping[str, int],
    group_of: Mapping[str, str],
    group_free: Mapping[str, int],
    weights: Mapping[str, float],
    default_weight: float = 1.0,
) -> list[Allotment]:
    """Hand out the free slots; one ``Allotment`` per (batch, model) that gets any.

    Args:
        model_free: free slots per model (a model absent: none).
        group_of: each model's group (upstream); a model absent is its own group, limited
            only by ``model_free``.
        group_free: free slots per group, shared by its models (a group absent: unlimited).
        weights: owner weights (absent, zero, negative or not finite: ``default_weight``).
    """
    free = {m: max(0, n) for m, n in model_free.items()}
    groups: dict[str, list[int]] = {}
    for i, c in enumerate(claimables):
        if c.model in group_of:
            groups.setdefault("g:" + group_of[c.model], []).append(i)
        else:
            groups.setdefault("m:" + c.model, []).append(i)
    allotted = [0] * len(claimables)
    models = [c.model for c in claimables]
    for key, members in groups.items():
        room = group_free.get(key[2:], _UNLIMITED) if key.startswith("g:") else _UNLIMITED
        _allocate_group(
            claimables, members, max(0, room), free, weights, default_weight, allotted, models
        )
    merged: dict[tuple[UUID, str], int] = {}
    for c, n in zip(claimables, allotted, strict=True):
        if n > 0:
            merged[(c.batch_id, c.model)] = merged.get((c.batch_id, c.model), 0) + n
    return [Allotment(batch_id=b, model=m, count=n) for (b, m), n in merged.items()]


def _weight(weights: Mapping[str, float], owner: str, default: float) -> float:
    w = weights.get(owner, default)
    return w if math.isfinite(w) and w > 0 else default


def _allocate_group(
    claimables: Sequence[Claimable],
    members: list[int],
    room: int,
    free: dict[str, int],
    weights: Mapping[str, float],
    default_weight: float,
    allotted: list[int],
    models: list[str],
) -> None:
    by_owner: dict[str, dict[tuple[bool, timedelta], list[_Entry]]] = {}
    loads: dict[str, int] = {}
    for i in members:
        c = claimables[i]
        classes = by_owner.setdefault(c.owner, {})
        classes.setdefault(priority_class(c), []).append((c.in_flight, c.expires_at, c.batch_id, i))
        loads[c.owner] = loads.get(c.owner, 0) + c.in_flight
    owners: dict[str, _Owner] = {}
    for name, classes in by_owner.items():
        heaps = [classes[k] for k in sorted(classes)]
        for h in heaps:
            heapq.heapify(h)
        owners[name] = _Owner(name, _weight(weights, name, default_weight), loads[name], heaps)
    group = _Group(owners, room, free, allotted, models)
    while group.room > 0 and group.owners:
        group.bulk()
        if not group.greedy(steps=len(group.owners) + len(members) + 1):
            break


class _Group:
    """One group's allocation in progress.

    ``greedy`` applies the rules one turn at a time (a turn may give several slots when
    the order is already decided); ``bulk`` jumps ahead to the state ``greedy`` would reach
    after many slots, when no model can fill up on the way (so no one's eligibility
    changes): the owners' shares by water-filling, then each owner's share within its
    best class the same way. Both leave the same state the one-slot-at-a-time rules do.
    """

    def __init__(
        self,
        owners: dict[str, _Owner],
        room: int,
        free: dict[str, int],
        allotted: list[int],
        models: list[str],
    ) -> None:
        self.owners = owners
        self.room = room
        self.free = free
        self.allotted = allotted
        self.models = models
        self.queue = [(o.load / o.weight, name) for name, o in owners.items()]
        heapq.heapify(self.queue)

    def _best_class(self, owner: _Owner) -> list[_Entry] | None:
        """The owner's best class with an eligible claimable on top; claimables whose
        model is full are dropped for good (free slots only shrink here)."""
        free, models = self.free, self.models
        for heap in owner.classes:
            while heap and free.get(models[heap[0][3]], 0) <= 0:
                heapq.heappop(heap)
            if heap:
                return heap
        return None

    def greedy(self, *, steps: int) -> bool:
        """Up to ``steps`` turns; False when nothing is eligible any more."""
        pop, push, replace = heapq.heappop, heapq.heappush, heapq.heapreplace
        queue, owners, free, models = self.queue, self.owners, self.free, self.models
        for _ in range(steps):
            if self.room <= 0 or not queue:
                return False
            _, name = pop(queue)
            owner = owners.get(name)
            if owner is None:
                continue  # dropped by ``bulk``
            heap = self._best_class(owner)
            if heap is None:
                del owners[name]  # nothing of this owner's is eligible any more
                continue
            top = heap[0]
            i = top[3]
            model = models[i]
            amount = min(self.room, free[model])
            if queue:
                amount = min(amount, _owner_run(owner, queue[0]))
            if len(heap) > 1:
                amount = min(amount, _entry_run(top, min(heap[1:3])))
            self.allotted[i] += amount
            free[model] -= amount
            self.room -= amount
            owner.load += amount
            replace(heap, (top[0] + amount, top[1], top[2], i))
            push(queue, (owner.load / owner.weight, name))
        return True

    def bulk(self) -> None:
        """Jump ahead by up to ``room`` slots while no model can fill up."""
        best: dict[str, list[_Entry]] = {}
        for name, owner in list(self.owners.items()):
            heap = self._best_class(owner)
            if heap is None:
                del self.owners[name]
                continue
            heap[:] = [e for e in heap if self.free.get(self.models[e[3]], 0) > 0]
            best[name] = heap
        if not best:
            return
        limit = min(self.free[self.models[e[3]]] for h in best.values() for e in h)
        slots = min(self.room, limit) - len(best) - 1  # each owner's ceil adds up to one
        if slots <= len(best):
            return  # too little to be worth it: greedy turns do it
        shares = _water_fill({n: self.owners[n] for n in best}, slots)
        for name, share in shares.items():
            if share:
                self._spread(best[name], share)
                self.owners[name].load += share
                self.room -= share
        self.queue = [(o.load / o.weight, name) for name, o in self.owners.items()]
        heapq.heapify(self.queue)

    def _spread(self, heap: list[_Entry], share: int) -> None:
        """Give ``share`` slots within one class as the greedy would: the lowest loads
        first (ties: earliest expiry, then batch), i.e. fill up to a level."""
        entries = sorted(heap)
        level, below, total = entries[0][0], 0, 0  # below: entries with load <= level
        # Raise the level while everyone at or below it can be lifted by one.
        while True:
            while below < len(entries) and entries[below][0] <= level:
                below += 1
            if total + below > share:
                break
            rise = (share - total) // below
            if below < len(entries):
                rise = min(rise, entries[below][0] - level)
            total += rise * below
            level += rise
        extra = share - total  # to the first ``extra`` entries at the level, in tie order
        lifted = []
        lucky = {e[3] for e in sorted(entries[:below], key=lambda e: e[1:])[:extra]}
        for load, expires_at, batch_id, i in entries:
            add = max(0, level - load) + (1 if i in lucky else 0)
            if add:
                self.allotted[i] += add
                self.free[self.models[i]] -= add
            lifted.append((load + add, expires_at, batch_id, i))
        heapq.heapify(lifted)
        heap[:] = lifted


def _water_fill(owners: Mapping[str, _Owner], slots: int) -> dict[str, int]:
    """Each owner's slots among the first (at most) ``slots`` of the greedy order.

    The greedy hands out the smallest keys ``(load + j) / weight`` first; a level ``L``
    with about ``slots`` keys below it is found by sweeping the owners in key order, and
    each owner gets exactly its keys below ``L`` (checked against the same float keys the
    greedy compares), which is a prefix of the greedy order.
    """
    order = sorted(owners.values(), key=lambda o: o.load / o.weight)
    weight_sum = load_sum = 0.0
    level = 0.0
    for k, owner in enumerate(order):
        weight_sum += owner.weight
        load_sum += owner.load
        level = (slots + load_sum) / weight_sum
        if k + 1 == len(order) or level <= order[k + 1].load / order[k + 1].weight:
            break
    shares: dict[str, int] = {}
    for owner in order:
        n = max(0, math.ceil(level * owner.weight - owner.load))
        while n > 0 and (owner.load + n - 1) / owner.weight >= level:
            n -= 1
        while (owner.load + n) / owner.weight < level:
            n += 1
        shares[owner.name] = n
    if sum(shares.values()) > slots + len(order) + 1:  # float trouble: skip the jump
        return {}
    return shares


def _owner_run(owner: _Owner, following: tuple[float, str]) -> int:
    """Slots in a row for ``owner`` before the ``following`` owner's turn comes."""
    key, name = following
    # Slot j (0-based) goes to this owner while (load + j) / weight < key, or == key with
    # this owner's name first. Rounding errs short (the next turn gives the rest).
    bound = key * owner.weight - owner.load - 1e-9 * (1.0 + abs(key * owner.weight))
    run = math.floor(bound) + 1 if owner.name < name else math.ceil(bound)
    return max(1, run)


def _entry_run(top: _Entry, following: _Entry) -> int:
    """Slots in a row for ``top`` before the ``following`` entry's turn comes."""
    run = following[0] - top[0] + (1 if top[1:] < following[1:] else 0)
    return max(1, run)
