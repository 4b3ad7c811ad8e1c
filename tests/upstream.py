"""Test helper: the mock upstream (``fusillade.mock_upstream``) as a pytest fixture.

``mock_upstream`` starts a ``MockUpstream`` with a default ``MockConfig()`` in the test's
nursery (pytest-trio's ``nursery`` fixture, cancelled when the test ends) and yields it; change
``server.config`` in the test and read ``server.stats``. Register it once in
``tests/conftest.py`` with ``pytest_plugins = ["upstream"]`` (``tests/`` is on ``sys.path``:
it holds the root conftest and no ``__init__.py``), or import it into a module::

    from upstream import mock_upstream_fixture  # noqa: F401 (registers ``mock_upstream``)

For another configuration, start one directly:
``server = await nursery.start(serve_mock_upstream, MockConfig(...))``.
"""

from __future__ import annotations

import pytest
import trio

from fusillade.mock_upstream import MockConfig, MockUpstream, serve_mock_upstream


@pytest.fixture(name="mock_upstream")
async def mock_upstream_fixture(nursery: trio.Nursery) -> MockUpstream:
    """A running mock upstream on a free loopback port (``server.url``, no ``/v1``)."""
    server: MockUpstream = await nursery.start(serve_mock_upstream, MockConfig())
    return server
