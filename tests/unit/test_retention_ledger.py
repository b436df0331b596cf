"""Ledger ids sort in the order they were made, so entries of one instant list newest first."""

from __future__ import annotations

import uuid

from services.retention.ledger import ordered_id, time_cursor, time_token


def test_ids_are_uuid7_in_the_order_made():
    ids = [ordered_id() for _ in range(20_000)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert {uuid.UUID(i).version for i in ids[:10]} == {7}


def test_page_tokens_round_trip():
    from datetime import UTC, datetime

    when, row = datetime(2026, 6, 1, tzinfo=UTC), ordered_id()
    assert time_cursor(time_token("ledger", when, row), "ledger") == (when, row)
