"""The pure core: data, rules and formats, with no I/O, no clock and no randomness.

Everything here takes ``now`` and any jitter as arguments, so the same inputs always give
the same outputs. The import rule (checked by import-linter) keeps trio, anyio, httpx and
psycopg out of this package.
"""
