"""A user's export: their rows, page by page, as strict JSON records, sealed columns opened.

Never exports a secret column, and never a sealed value as it is stored: each page's sealed
values are opened with the user's keys (fetched once per page, never created: a key that was
never made sealed nothing). A value that cannot be opened (its day key destroyed once it passed
its max age, or its owner key destroyed) is exported as null beside `"<column>_purged": true`,
as every read shows a purged value.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import AsyncIterator, Sequence
from datetime import date, datetime
from typing import Any

from sqlalchemy import select, tuple_

from services.kit.clock import as_utc
from services.kit.db import Database
from services.kit.retention.categories import TableCategory
from services.kit.retention.seal import keys_unavailable
from services.kit.sealing import (
    ExecutionKeys,
    KeysUnavailable,
    Ref,
    SealedColumns,
    Unreadable,
    day_of,
    is_sealed,
)

EXPORT_PAGE = 500
EXPORT_BATCH_RECORDS, EXPORT_BATCH_BYTES = 500, 256 * 1024
PURGED_SUFFIX = "_purged"


async def export_rows(
    database: Database,
    category: TableCategory,
    user_id: str,
    sealed: Sequence[SealedColumns],
    keys: ExecutionKeys | None,
) -> AsyncIterator[dict[str, Any]]:
    """The user's rows of `category`, by key; `sealed`: the sealed columns of its table (of any
    category: a run's event is sealed as an execution detail, exported with the run)."""
    table = category.table
    keys_ = list(table.primary_key.columns)
    shown = [c for c in table.columns if c.name not in category.secret_columns]
    names = {c.name for c in shown}
    needed = {n for s in sealed for n in (s.time_column, s.owner_column, *s.id_columns)}
    extra = [table.c[n] for n in sorted(needed - names)]
    after: tuple | None = None
    while True:
        query = select(*shown, *extra, *keys_).where(table.c[category.user_column] == user_id)
        if after is not None:
            query = query.where(tuple_(*keys_) > tuple_(*after))
        query = query.order_by(*keys_).limit(EXPORT_PAGE)
        async with database.read() as connection:
            rows = [dict(row._mapping) for row in (await connection.execute(query)).all()]
        purged = await _open_page(rows, [s for s in sealed if set(s.columns) & names], keys)
        for row, gone in zip(rows, purged, strict=True):
            record = {c.name: plain(row[c.name]) for c in shown}
            record.update({f"{name}{PURGED_SUFFIX}": True for name in gone})
            yield record
        if len(rows) < EXPORT_PAGE:
            return
        after = tuple(rows[-1][k.name] for k in keys_)


async def _open_page(
    rows: list[dict[str, Any]], sealed: Sequence[SealedColumns], keys: ExecutionKeys | None
) -> list[list[str]]:
    """Opens the page's sealed values in place; per row, the columns that read as purged."""
    wanted: dict[str, set[Ref]] = {}
    for row in rows:
        for columns in sealed:
            owner = row[columns.owner_column]  # None: detached from an erased owner, keys gone
            if owner is not None and any(is_sealed(row.get(n)) for n in columns.columns):
                wanted.setdefault(owner, set()).add(columns.ref(row))
    opened = {}
    if keys is not None:
        try:
            for owner, refs in wanted.items():
                opened[owner] = await keys.for_user(owner, refs)
        except KeysUnavailable:
            raise keys_unavailable() from None
    purged: list[list[str]] = []
    for row in rows:
        gone: list[str] = []
        for columns in sealed:
            owner_keys = opened.get(row[columns.owner_column])
            day, row_id = day_of(row[columns.time_column]), columns.row_id(row)
            for name in columns.columns:
                if not is_sealed(row.get(name)):
                    continue
                try:
                    if owner_keys is None:
                        raise Unreadable("destroyed")  # no keys here: nothing opens
                    row[name] = owner_keys.open(columns.place(name), day, row_id, row[name])
                except Unreadable:
                    row[name] = None
                    gone.append(name)
        purged.append(gone)
    return purged


def plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return as_utc(value).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode()
    return value


def _json_default(value: Any) -> Any:
    shown = plain(value)
    if shown is value:
        return str(value)
    return shown


def json_text(record: dict[str, Any]) -> str:
    """One record as compact, strict JSON, spliced as it is into the gateway's export: NaN and
    infinities (which JSON has not) written as strings."""
    try:
        return json.dumps(record, default=_json_default, separators=(",", ":"), allow_nan=False)
    except ValueError:
        return json.dumps(_finite(record), default=_json_default, separators=(",", ":"))


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return json.dumps(value)  # "NaN", "Infinity", "-Infinity"
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
