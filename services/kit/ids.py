"""Ids of rows that are made, listed and purged in time order (runs, webhook-log entries,
notifications, the retention ledger): UUID version 7 (RFC 9562), Unix milliseconds followed by
random bits. As unguessable as a version 4, but an index on them grows at its end, and a purge of
the oldest rows deletes a contiguous range of it instead of touching one random page per row (on
SQLite ten times the writing). Python's `uuid` makes version 7 from 3.14 on; until then, this.
"""

from __future__ import annotations

import secrets
import threading
import time
import uuid
from datetime import datetime

_last = [0, 0]  # (milliseconds, sequence) of the newest id this process made of its own time
_lock = threading.Lock()


def time_ordered_id(when: datetime | None = None) -> str:
    """A UUIDv7 for a row made at `when` (the row's own time, from the service's clock, so that
    ids sort as their rows age). Without `when`, the process's time, with a sequence within the
    millisecond (RFC 9562's method 1): ids of one process sort in the order they were made."""
    if when is not None:
        millis = int(when.timestamp() * 1000) & ((1 << 48) - 1)
        return _uuid7(millis, secrets.randbits(12))
    with _lock:
        millis = time.time_ns() // 1_000_000
        if millis <= _last[0]:
            millis, sequence = _last[0], _last[1] + 1
            if sequence >= 1 << 12:  # 4096 ids in one millisecond: borrow the next one
                millis, sequence = millis + 1, 0
        else:
            sequence = 0
        _last[:] = [millis, sequence]
    return _uuid7(millis, sequence)


def _uuid7(millis: int, twelve_bits: int) -> str:
    # 48 bits of time, version 7, 12 bits (sequence or random), variant 0b10, 62 random bits
    value = (millis << 80) | (0x7 << 76) | (twelve_bits << 64) | (0b10 << 62)
    return str(uuid.UUID(int=value | secrets.randbits(62)))
