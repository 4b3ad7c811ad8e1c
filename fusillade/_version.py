"""The package's version, in a leaf module that everything may import.

The runtime and the server read it from here, never from the package root: importing
``fusillade`` itself loads the engine, which loads the runtime (an import cycle).
``pyproject.toml`` holds the same number for the build.
"""

from __future__ import annotations

__version__ = "0.1.0"
