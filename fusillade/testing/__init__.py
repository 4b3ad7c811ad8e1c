"""What to test code that uses fusillade with: no PostgreSQL, no real upstream.

- ``MemoryRepository``: the repository in process memory, for
  ``fusillade.open(repository=MemoryRepository(), config=...)``. It keeps the rules of the
  PostgreSQL one (the same state table, fences and constraints; a shared test holds the
  two equal), and nothing survives the process.
- ``serve_mock_upstream`` (trio): an OpenAI-compatible fake upstream with faults chosen
  per model (``MockConfig``, ``Behaviour``: statuses, 429s with ``retry-after``,
  latency, hangs, resets, invalid JSON) and counters (``MockStats``) to assert on.
- ``open_in_memory`` (trio): both at once: a fresh ``MemoryRepository``, a mock upstream
  that every request is sent to, and ``fusillade.open`` on them with a daemon running.

Example (docs/testing-your-code.md has a complete one)::

    async with fusillade.testing.open_in_memory() as harness:
        file = await harness.engine.create_file(templates)
        batch = await harness.engine.create_batch(file.id)
        done = await harness.engine.wait(batch.record.id, interval=0.05)
        assert harness.upstream.stats.total == len(templates)
"""

from __future__ import annotations

from fusillade.mock_upstream import (
    Behaviour,
    MockConfig,
    MockStats,
    MockUpstream,
    serve_mock_upstream,
)
from fusillade.store.memory import MemoryRepository
from fusillade.testing._harness import Harness, open_in_memory

__all__ = [
    "Behaviour",
    "Harness",
    "MemoryRepository",
    "MockConfig",
    "MockStats",
    "MockUpstream",
    "open_in_memory",
    "serve_mock_upstream",
]
