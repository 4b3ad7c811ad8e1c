"""The repository as the runtime calls it: blocking calls moved to worker threads.

A repository whose ``blocking`` attribute is False (the in-memory one) is called
directly: it never blocks, and staying on the event loop lets tests run it under a
virtual clock.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import anyio
import anyio.to_thread

from fusillade.store.interface import Repository

P = ParamSpec("P")
R = TypeVar("R")


class AsyncRepository:
    def __init__(self, repo: Repository, *, threads: int = 8) -> None:
        self.sync = repo
        self._blocking: bool = getattr(repo, "blocking", True)
        self._limiter = anyio.CapacityLimiter(threads)

    async def call(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run ``fn(*args, **kwargs)`` (a bound method of the repository)."""
        if not self._blocking:
            return fn(*args, **kwargs)
        bound: Callable[[], R] = functools.partial(fn, *args, **kwargs)
        return await anyio.to_thread.run_sync(bound, limiter=self._limiter)
