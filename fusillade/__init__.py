"""fusillade: durable batches of HTTP requests from PostgreSQL, on trio."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
