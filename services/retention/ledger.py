"""The purge ledger: one row per purge run, newest first, itself a category (1 year)."""

from __future__ import annotations

import secrets
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from services.kit.tokens import invalid_page_token, page_cursor, page_token
from services.retention.store import Store

DEFAULT_PAGE, MAX_PAGE = 100, 1000


@dataclass(frozen=True)
class Entry:
    participant: str
    category: str
    cutoff: datetime
    rows_deleted: int
    start_time: datetime
    end_time: datetime
    outcome: str  # ok, failed, dry_run
    error: str
    trigger: str  # scheduled, operator


_last = [0, 0]  # (milliseconds, sequence) of the newest id this process made
_lock = threading.Lock()


def ordered_id() -> str:
    """A UUIDv7 (RFC 9562: Unix milliseconds, then a sequence within the millisecond, then random
    bits): the ledger lists newest first by start time, and entries of one instant (a rehearsal
    then the purge it rehearsed) by the order they were written."""
    with _lock:
        millis = time.time_ns() // 1_000_000
        if millis <= _last[0]:
            millis, sequence = _last[0], _last[1] + 1
            if sequence >= 1 << 12:  # 4096 ids in one millisecond: borrow the next one
                millis, sequence = millis + 1, 0
        else:
            sequence = 0
        _last[:] = [millis, sequence]
    value = (millis << 80) | (0x7 << 76) | (sequence << 64) | (0b10 << 62) | secrets.randbits(62)
    return str(uuid.UUID(int=value))


class Ledger:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def record(self, entry: Entry) -> str:
        entry_id = ordered_id()
        async with self.store.begin() as tx:
            await tx.add_ledger_entry({"id": entry_id, **entry.__dict__})
        return entry_id

    async def page(
        self, page_size: int, token: str, participant: str = "", category: str = ""
    ) -> tuple[list[dict[str, Any]], str]:
        size = min(max(page_size or DEFAULT_PAGE, 1), MAX_PAGE)
        after = time_cursor(token, "ledger") if token else None
        async with self.store.read() as tx:
            rows = await tx.ledger_page(after, size + 1, participant, category)
        more, rows = len(rows) > size, rows[:size]
        last = rows[-1] if more else None
        return rows, time_token("ledger", last["start_time"], last["id"]) if last else ""

    async def last_purges(self) -> dict[tuple[str, str], datetime]:
        async with self.store.read() as tx:
            return await tx.last_purges()


def time_token(kind: str, when: datetime, row_id: str) -> str:
    return page_token(f"{kind}:{when.isoformat()}|{row_id}")


def time_cursor(token: str, kind: str) -> tuple[datetime, str]:
    prefix, _, rest = page_cursor(token).partition(":")
    when, _, row_id = rest.partition("|")
    if prefix != kind or not row_id:
        raise invalid_page_token()
    try:
        return datetime.fromisoformat(when), str(uuid.UUID(row_id))
    except ValueError:
        raise invalid_page_token() from None
