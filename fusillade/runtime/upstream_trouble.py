"""Upstream trouble in the logs, summarized (``fusillade.core.upstream_trouble``).

Each attempt's outcome is counted per upstream as the request task decides it
(``_note_outcome``); about once a second ``_trouble_loop`` logs what the core says to:
a warning when an upstream's trouble starts and at most one summary per
``trouble_interval`` while it lasts, an info line when it clears. An upstream is shown
by its configured name and host, never by a URL (which may carry credentials).
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

import anyio

from fusillade.core.retry import Outcome
from fusillade.core.upstream_trouble import TroubleReport, problem_of
from fusillade.runtime._base import DaemonBase

log = logging.getLogger("fusillade.upstream")


class TroubleReports(DaemonBase):
    def _note_outcome(self, model: str, outcome: Outcome) -> None:
        upstream = self.config.upstream_name_for(model)
        if upstream is None:
            return
        problem = problem_of(outcome)
        if problem is None and not self.trouble.in_trouble(upstream):
            return  # the common case: nothing to count
        self.trouble.note(upstream, problem, anyio.current_time(), self.config.metric_label(model))

    async def _trouble_loop(self) -> None:
        tick = min(1.0, self.trouble.interval)
        while True:
            await anyio.sleep(tick)
            for report in self.trouble.report(anyio.current_time()):
                self._log_trouble(report)

    def _log_trouble(self, report: TroubleReport) -> None:
        upstream = report.upstream
        base_url = self.config.upstreams[upstream].base_url
        host = urlsplit(base_url).hostname or ""
        now = anyio.current_time()
        throttled = sorted(
            {
                s.state.throttle
                for s in self.budgets.states(now)
                if s.scope[0] == upstream and s.state.throttle is not None
            }
        )
        name = f"{upstream} ({host})" if host and host != upstream else upstream
        log.log(
            logging.INFO if report.phase == "cleared" else logging.WARNING,
            "%s",
            report.describe(name, throttled),
            extra={
                "event": f"upstream_trouble_{report.phase}",
                "upstream": upstream,
                "host": host,
                "counts": dict(report.counts),
                "succeeded": report.succeeded,
                "seconds": round(report.seconds, 3),
                "throttled": throttled,
                "models": dict(report.models),
            },
        )
