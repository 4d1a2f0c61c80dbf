"""Small conversions between domain values and proto fields, used by every servicer."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from google.protobuf import struct_pb2, timestamp_pb2

from distillery.common.v1 import common_pb2
from services.common.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


def timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def struct(value: dict[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(value)
    return out


def page_size(page: common_pb2.PageRequest) -> int:
    if page.page_size < 0:
        raise InvalidArgument("page_size must not be negative", field="page.page_size")
    return min(page.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
