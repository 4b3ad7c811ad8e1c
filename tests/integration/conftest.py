"""Integration-test helpers on top of the root harness (tests/conftest.py).

Fixtures:
    db: an autocommit psycopg connection to ``database_url`` (a fresh migrated database).
    run_fusillade: runs ``python -m fusillade ARGS`` in a subprocess with the fusillade
        this test process imports, and without the caller's database variables.
    spawn_fusillade: the same, started in the background (a ``subprocess.Popen``).
    wait_until: polls a condition with a timeout (never a bare sleep).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import psycopg
import pytest

import fusillade

# Where the tested fusillade lives (a checkout, or site-packages under tox).
_IMPORT_ROOT = str(Path(fusillade.__file__).resolve().parent.parent)


@pytest.fixture
def db(database_url: str) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


def fusillade_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a ``python -m fusillade`` subprocess."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "FUSILLADE_DATABASE_URL", "PYTHONPATH")
    }
    env["PYTHONPATH"] = _IMPORT_ROOT
    env.update(extra or {})
    return env


class RunFusillade(Protocol):
    def __call__(
        self,
        args: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]: ...


@pytest.fixture
def run_fusillade(tmp_path: Path) -> RunFusillade:
    """Run the command line to completion, from a directory outside the checkout."""

    def run(
        args: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "fusillade", *args],
            env=fusillade_env(env),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )

    return run


@pytest.fixture
def spawn_fusillade(tmp_path: Path) -> Callable[..., subprocess.Popen[str]]:
    """Start the command line with pipes for stdout and stderr; the caller reaps it."""

    def spawn(
        args: Sequence[str], *, env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "fusillade", *args],
            env=fusillade_env(env),
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )

    return spawn


WaitUntil = Callable[..., None]


def _wait_until(
    condition: Callable[[], bool], *, timeout: float = 30.0, what: str = "the condition"
) -> None:
    """Return as soon as ``condition()`` is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)  # the polling interval of a bounded wait, not a wait by itself


@pytest.fixture
def wait_until() -> WaitUntil:
    return _wait_until
