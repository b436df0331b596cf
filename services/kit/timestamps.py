"""Protobuf well-known types for every servicer: datetimes as Timestamps, JSON as Values."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_timestamp(value: datetime | None) -> Timestamp | None:
    """A Timestamp, or None (the field stays unset) for a missing time; a naive datetime is UTC,
    as for Timestamp.FromDatetime (whose pure-Python calendar arithmetic costs several times
    more, on every message that carries a time)."""
    if value is None:
        return None
    return put_timestamp(Timestamp(), value)


def put_timestamp(stamp: Timestamp, value: datetime) -> Timestamp:
    """Sets `stamp` (a message's own Timestamp field, as a rule: no copy) to `value`."""
    delta = (value if value.tzinfo else value.replace(tzinfo=UTC)) - _EPOCH
    stamp.seconds = delta.days * 86_400 + delta.seconds
    stamp.nanos = delta.microseconds * 1000
    return stamp


def to_value(value: object):
    """Plain JSON as a google.protobuf.Value (None as null_value)."""
    from google.protobuf import struct_pb2
    from google.protobuf.json_format import ParseDict

    if value is None:
        return struct_pb2.Value(null_value=struct_pb2.NULL_VALUE)
    return ParseDict(value, struct_pb2.Value())


def json_value(message) -> object:
    """A google.protobuf.Value (or Struct) as plain JSON, whole numbers as ints: protobuf keeps
    every number as a double, and 5 must not reach a third party as 5.0."""
    from google.protobuf.json_format import MessageToDict

    return _whole(MessageToDict(message))


def _whole(value):
    if isinstance(value, float) and value.is_integer() and abs(value) <= 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: _whole(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole(v) for v in value]
    return value
