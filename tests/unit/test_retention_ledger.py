"""Ledger ids sort in the order they were made, so entries of one instant list newest first."""

from __future__ import annotations

import uuid

from services.kit.ids import time_ordered_id as ordered_id
from services.retention.ledger import time_cursor, time_token


def test_ids_are_uuid7_in_the_order_made():
    ids = [ordered_id() for _ in range(20_000)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert {uuid.UUID(i).version for i in ids[:10]} == {7}


def test_page_tokens_round_trip():
    from datetime import UTC, datetime

    when, row = datetime(2026, 6, 1, tzinfo=UTC), ordered_id()
    assert time_cursor(time_token("ledger", when, row), "ledger") == (when, row)


def test_ids_of_a_given_time_sort_by_that_time_and_stay_version_7():
    from datetime import UTC, datetime, timedelta

    start = datetime(2026, 6, 1, tzinfo=UTC)
    times = [start + timedelta(milliseconds=5 * n) for n in range(2000)]
    ids = [ordered_id(when) for when in reversed(times)]  # made newest first, as a seed is
    assert sorted(ids) == list(reversed(ids)) and len(set(ids)) == len(ids)
    assert {uuid.UUID(i).version for i in ids} == {7}
    assert {uuid.UUID(i).variant for i in ids} == {uuid.RFC_4122}
    assert int(uuid.UUID(ids[-1]).int >> 80) == int(start.timestamp() * 1000)
