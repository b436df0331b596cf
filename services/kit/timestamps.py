"""Datetimes to and from `google.protobuf.Timestamp`: one conversion for every servicer."""

from __future__ import annotations

from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp


def to_timestamp(value: datetime | None) -> Timestamp | None:
    """A Timestamp, or None (the field stays unset) for a missing time."""
    if value is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp
