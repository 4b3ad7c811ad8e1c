"""What the mock upstream has seen: counters tests assert on (``server.stats``, ``GET /_stats``)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import attrs

REQUEST_ID_HEADER = "x-fusillade-request-id"


@attrs.define(kw_only=True)
class MockStats:
    """Live counters of API requests (the control routes ``/_*``, ``/health`` and
    ``/v1/models`` are not counted).

    A request counts from the moment its body has arrived. It is *in flight* from then until
    its answer is fully sent or its connection is gone (a hung request stays in flight until
    the client gives up). Requests without a ``model`` count under ``""``.

    Attributes:
        total: API requests received.
        by_model, by_path: requests received per body ``model`` and per path.
        by_request_id: how many times each ``X-Fusillade-Request-Id`` was seen.
        by_status: answers sent, per HTTP status.
        faults: requests answered by a fault, per kind (``status``, ``timeout``, ``reset``,
            ``rate_limit``, ``error``, ``invalid_json``).
        rate_limited: 429s answered because a request was over ``rpm``, ``tpm`` or
            ``max_in_flight``, per that cause.
        in_flight, peak_in_flight: current (models with none in flight are left out) and
            highest concurrent requests per model.
        in_flight_total, peak_in_flight_total: the same over all models.
        connections_opened, connections_open: TCP connections accepted in total and open now.
        last_headers: the last API request's headers (lowercase names; repeats joined by ", ").
        last_body: the last API request's parsed JSON body (``None`` when it was not JSON).
    """

    total: int = 0
    by_model: Counter[str] = attrs.Factory(Counter)
    by_path: Counter[str] = attrs.Factory(Counter)
    by_request_id: Counter[str] = attrs.Factory(Counter)
    by_status: Counter[int] = attrs.Factory(Counter)
    faults: Counter[str] = attrs.Factory(Counter)
    rate_limited: Counter[str] = attrs.Factory(Counter)
    in_flight: Counter[str] = attrs.Factory(Counter)
    peak_in_flight: Counter[str] = attrs.Factory(Counter)
    in_flight_total: int = 0
    peak_in_flight_total: int = 0
    connections_opened: int = 0
    connections_open: int = 0
    last_headers: dict[str, str] = attrs.Factory(dict)
    last_body: Any = None

    def request_started(
        self, model: str, path: str, headers: dict[str, str], body: object
    ) -> tuple[int, int]:
        """Count an arriving request; returns its ordinal overall and for its model (from 1)."""
        self.total += 1
        self.by_model[model] += 1
        self.by_path[path] += 1
        request_id = headers.get(REQUEST_ID_HEADER)
        if request_id is not None:
            self.by_request_id[request_id] += 1
        self.last_headers = headers
        self.last_body = body
        self.in_flight[model] += 1
        self.in_flight_total += 1
        self.peak_in_flight[model] = max(self.peak_in_flight[model], self.in_flight[model])
        self.peak_in_flight_total = max(self.peak_in_flight_total, self.in_flight_total)
        return self.total, self.by_model[model]

    def request_finished(self, model: str) -> None:
        self.in_flight[model] -= 1
        if not self.in_flight[model]:
            del self.in_flight[model]
        self.in_flight_total -= 1

    def reset(self) -> None:
        """Zero the counters; what is in flight or open now stays counted (and is the new peak)."""
        in_flight = +self.in_flight  # drops the zero entries
        open_now, in_flight_total = self.connections_open, self.in_flight_total
        fresh = MockStats()
        for field in attrs.fields(MockStats):
            setattr(self, field.name, getattr(fresh, field.name))
        self.in_flight = in_flight
        self.peak_in_flight = in_flight.copy()
        self.in_flight_total = self.peak_in_flight_total = in_flight_total
        self.connections_open = open_now

    def to_json(self) -> dict[str, Any]:
        """The counters as JSON (statuses become string keys)."""
        data = attrs.asdict(self, recurse=False)
        for name, value in data.items():
            if isinstance(value, Counter):
                data[name] = {str(key): count for key, count in value.items()}
        return data
