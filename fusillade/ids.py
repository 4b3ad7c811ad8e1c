"""Time-ordered ids (UUID version 7, RFC 9562) for files and batches.

Ordering ids by value orders them by creation (to the millisecond), so list cursors
are plain id comparisons. Python 3.11 has no ``uuid.uuid7``; this is the layout of
RFC 9562 section 5.7: 48-bit Unix milliseconds, version, 74 random bits.
"""

from __future__ import annotations

import os
import threading
import time
from uuid import UUID

_last = 0
_lock = threading.Lock()


def next_uuid7() -> UUID:
    """A uuid7 greater than every earlier one from this process, so two ids made in the
    same millisecond still sort in creation order."""
    global _last
    with _lock:
        value = uuid7().int
        if value <= _last:
            value = _last + 1  # same millisecond: count up in the random bits
        _last = value
    return UUID(int=value)


def uuid7(unix_ms: int | None = None) -> UUID:
    ms = int(time.time() * 1000) if unix_ms is None else unix_ms
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76  # version
    value |= ((rand >> 62) & 0xFFF) << 64  # rand_a (12 bits)
    value |= 0b10 << 62  # variant
    value |= rand & ((1 << 62) - 1)  # rand_b (62 bits)
    return UUID(int=value)
