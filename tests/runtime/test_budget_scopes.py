"""The daemon's budgets keep a bounded state whatever model names requests carry."""

from __future__ import annotations

from datetime import UTC, datetime

from fusillade.core.retry import HttpResponse
from fusillade.runtime.budgets import Budgets
from fusillade.runtime.config import DaemonConfig, Upstream


def test_invented_model_names_do_not_grow_the_budgets() -> None:
    budgets = Budgets(DaemonConfig(upstreams={"up": Upstream("http://u")}, default_upstream="up"))
    answer = HttpResponse(200, {}, "{}")
    for i in range(3000):
        model, now = f"invented-{i}", float(i)
        budgets.free([model], now)
        budgets.start(model, now)
        held = budgets.estimate(model, '{"max_tokens": 5}')
        assert budgets.reserve(held, now)
        budgets.finish(
            held, now, reserved=True, used=10, response=answer, wall_clock=datetime.now(UTC)
        )
    # 1,024 model scopes at most (idle ones are forgotten), plus the upstream's own
    assert len(budgets.states(3000.0)) <= 1025
    assert len(budgets._last_used) <= 1025
