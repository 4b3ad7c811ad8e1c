"""A daemon's part of a budget that several daemons share (docs/scheduling.md).

Daemons lease the budgets they use in PostgreSQL; each uses ``1/N`` of a budget that
``N`` live daemons lease. A new lease is used only once it is a heartbeat old: the other
holders refresh their leases, and shrink their parts, once per heartbeat, so the parts
never add up to more than the budget.
"""

from __future__ import annotations

from datetime import datetime


def fraction_of(holders: int, since: datetime, now: datetime, settle_seconds: float) -> float:
    """This daemon's part of a budget that ``holders`` live daemons lease.

    A lease younger than ``settle_seconds`` (one heartbeat) gets nothing while others hold
    the scope: they have not yet seen it and shrunk their parts, and the parts must never
    add up to more than the budget. Alone, a daemon has all of it at once.
    """
    if holders <= 1:
        return 1.0
    if (now - since).total_seconds() < settle_seconds:
        return 0.0
    return 1.0 / holders
