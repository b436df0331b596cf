"""Keyset paging shared by the repositories: newest first, after an opaque sequence number."""

from __future__ import annotations

from typing import Any


def page(table: Any, query: Any, after: int | None, size: int) -> Any:
    if after is not None:
        query = query.where(table.c.seq < after)
    return query.order_by(table.c.seq.desc()).limit(size)
