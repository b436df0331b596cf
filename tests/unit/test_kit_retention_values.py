"""The kit's retention values without a database: every category kind answers the attributes the
participant reads, and an exported record is strict JSON."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import Column, Integer, MetaData, Table

from services.kit.partitions import DailyPartitions
from services.kit.retention import ColumnCategory, FileCategory, TableCategory, _json_text
from services.kit.sealing import SealedColumns

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
table = Table("t", MetaData(), Column("id", Integer, primary_key=True))
SEALED = SealedColumns("c", "t", ("body",), "create_time", "user_id")


def test_every_kind_of_category_says_whether_it_is_partitioned_and_sealed():
    week = timedelta(days=7)
    plain = [
        TableCategory("a", "a", "law", table, week, "create_time"),
        ColumnCategory("b", "b", "law", table, week, "create_time", ("body",), "purge_time"),
        FileCategory("c", "c", "law", Path("var"), week),
    ]
    assert [(c.partitions, c.sealed) for c in plain] == [(None, None)] * 3
    days = DailyPartitions()
    table_category = TableCategory("a", "a", "law", table, week, partitions=days, sealed=SEALED)
    assert (table_category.partitions, table_category.sealed) == (days, SEALED)
    column = ColumnCategory("b", "b", "law", table, week, "t", ("body",), "p", sealed=SEALED)
    assert (column.partitions, column.sealed) == (None, SEALED)


def test_an_exported_record_is_strict_json_the_gateway_splices_as_it_is():
    text = _json_text({"x": float("nan"), "y": [float("-inf"), 1.5], "t": NOW})

    def refuse(constant: str):
        raise ValueError(constant)

    assert json.loads(text, parse_constant=refuse) == {
        "x": "NaN", "y": ["-Infinity", 1.5], "t": NOW.isoformat()
    }  # fmt: skip
    assert " " not in text
