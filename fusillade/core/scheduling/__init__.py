"""Scheduling math: rate budgets, token reservations and fair shares, as pure functions.

Nothing here reads a clock: ``now`` is a float of seconds on the caller's monotonic clock
(``headers.parse_limits`` takes a wall-clock ``datetime`` to read absolute reset times).
The runtime feeds facts in (requests started, answers and their headers) and applies the
answers (how many may start now, when to look again, who gets which slot).

- ``headers``: the rate limits an answer reports (OpenAI, Anthropic, IETF RateLimit).
- ``bucket``: a continuous-refill token bucket with explicit time.
- ``budget``: one scope's budget (in flight, requests and tokens per minute), learned
  from headers and 429s (``aimd``: the estimate 429s alone drive).
- ``tokens``: a request's token estimate, and the usage an answer reports.
- ``fair``: free slots shared between owners and their batches.
- ``shares``: a daemon's part of a budget that several daemons lease.
"""
