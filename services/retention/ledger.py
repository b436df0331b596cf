"""The purge ledger: one row per purge run, newest first, itself a category (1 year)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from services.kit.ids import time_ordered_id
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


class Ledger:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def record(self, entry: Entry) -> str:
        entry_id = time_ordered_id()
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
