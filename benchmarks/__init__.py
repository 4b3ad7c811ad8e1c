"""fusillade's benchmark harness: ``python -m benchmarks`` (see docs/performance.md).

Not part of the package and not part of the test suite: it measures the targets P1-P8 on
one machine in one run, side by side with the baselines (bare httpx under trio, pgqueuer),
and writes the table into docs/performance.md. ``tests/benchmarks/test_smoke.py`` runs it
at a tiny scale so it cannot rot; nothing in CI times anything.

Modules: ``run`` (the command), ``common`` (sizes, bodies, child processes), ``upstream``
(nginx or mock-upstream), ``database`` (fresh databases, bulk seeding), ``child`` (what
runs inside each measured child process), ``baselines`` (bare httpx, pgqueuer), ``server``
(``fusillade serve`` as a child), ``recorder`` (P8's upstream), ``throughput`` (P1-P3),
``data`` (P4-P6), ``scale`` (P7, also a script of its own), ``latency`` (P8), ``report``
(the table).
"""
