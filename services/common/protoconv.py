"""Small conversions between domain values and proto fields, and the bounds of every request field,
used by every servicer."""

from __future__ import annotations

import functools
import math
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from google.protobuf import struct_pb2, timestamp_pb2
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message

from distillery.common.v1 import common_pb2
from services.common.errors import InvalidArgument
from services.common.ids import check_count, check_id, check_text

T = TypeVar("T")

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


# --- every request field bounded ---
#
# ``bounded(service, bounds)`` wraps every RPC of a servicer class so that each request (each
# message of a client stream) is checked before the method sees it. The defaults, for fields by
# name, wherever they are in the request (``Bounds`` overrides them per field path, written
# without list indexes: "system_prompts.text"):
#
#   ids         ``id``, ``*_id``, ``*_ids``: "" or an id (``ids.check_id``: at most 128 letters,
#               digits, ``_ - . :``); ``page.page_token`` is checked by ``paging``
#   names       ``NAME_FIELDS``: at most 256 characters, no control character
#   texts       every other string: at most 65,536 characters, no NUL
#   enums       a value the server knows
#   numbers     floats finite and >= 0, int32 within 0..2^31-1, int64 within 0..2^53, unless
#               ``Bounds.numbers`` gives the field's range
#   lists       at most 1,000 entries (maps too)
#
# A refusal is INVALID_ARGUMENT naming the field with its indexes ("system_prompts[3].name").

MAX_NAME_CHARS = 256
MAX_TEXT_CHARS = 65_536
MAX_LIST_ITEMS = 1_000
MAX_INT64 = 2**53
NAME_FIELDS = frozenset({
    "name", "filename", "display_name", "teacher", "base_model", "language", "role", "tool_name", "sha256",
    "api_key", "artifact_uri", "source_key", "page_token",
})  # fmt: skip


@dataclass(frozen=True)
class Bounds:
    """A service's bounds beyond the defaults, by field path without indexes."""

    strings: Mapping[str, int] = field(default_factory=dict)
    lists: Mapping[str, int] = field(default_factory=dict)
    numbers: Mapping[str, tuple[float, float]] = field(default_factory=dict)


def _is_id(name: str) -> bool:
    return name == "id" or name.endswith(("_id", "_ids"))


def check_request(message: Message, bounds: Bounds, prefix: str = "", path: str = "") -> None:
    """Every field of ``message`` within its bounds, or INVALID_ARGUMENT naming the first one out of them."""
    for fd, value in message.ListFields():
        where, key = f"{prefix}{fd.name}", f"{path}{fd.name}"
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            check_count(value, where, bounds.lists.get(key, MAX_LIST_ITEMS))
            continue
        if fd.is_repeated:
            check_count(value, where, bounds.lists.get(key, MAX_LIST_ITEMS))
            for i, item in enumerate(value):
                _check_value(fd, item, bounds, f"{where}[{i}]", key)
        else:
            _check_value(fd, value, bounds, where, key)


def _check_value(fd: FieldDescriptor, value: Any, bounds: Bounds, where: str, key: str) -> None:
    kind = fd.cpp_type
    if kind == FieldDescriptor.CPPTYPE_MESSAGE:
        if fd.message_type is not None and not fd.message_type.full_name.startswith("google.protobuf."):
            check_request(value, bounds, f"{where}.", f"{key}.")  # (Struct & co are free-form by design)
    elif kind == FieldDescriptor.CPPTYPE_STRING:
        if fd.type == FieldDescriptor.TYPE_STRING:
            _check_string(fd.name, value, bounds, where, key)
    elif kind == FieldDescriptor.CPPTYPE_ENUM and fd.enum_type is not None:
        if value not in fd.enum_type.values_by_number:
            known = ", ".join(v.name for v in fd.enum_type.values if v.number)
            raise InvalidArgument(f"{where} {value} is not a value this server knows: one of {known}", field=where)
    elif kind in (FieldDescriptor.CPPTYPE_FLOAT, FieldDescriptor.CPPTYPE_DOUBLE):
        low, high = bounds.numbers.get(key, (0.0, math.inf))
        if not math.isfinite(value) or not low <= value <= high:
            raise InvalidArgument(f"{where} must be a number from {low:g} to {high:g} (got {value})", field=where)
    elif kind != FieldDescriptor.CPPTYPE_BOOL:
        wide = kind in (FieldDescriptor.CPPTYPE_INT64, FieldDescriptor.CPPTYPE_UINT64)
        low, high = bounds.numbers.get(key, (0, MAX_INT64 if wide else 2**31 - 1))
        if not low <= value <= high:
            raise InvalidArgument(f"{where} must be from {low:g} to {high:g} (got {value})", field=where)


def _check_string(name: str, value: str, bounds: Bounds, where: str, key: str) -> None:
    if key in bounds.strings:
        limit = bounds.strings[key]
    elif _is_id(name):
        check_id(value, where)
        return
    elif name in NAME_FIELDS:
        check_text(value, where, MAX_NAME_CHARS)
        return
    else:
        limit = MAX_TEXT_CHARS
    if len(value) > limit:
        raise InvalidArgument(f"{where} is {len(value)} characters long: give at most {limit}", field=where)
    if "\x00" in value:
        raise InvalidArgument(f"{where} has a NUL character: give text without one", field=where)


def bounded(service: ServiceDescriptor, bounds: Bounds | None = None) -> Callable[[type[T]], type[T]]:
    """A class decorator: every RPC of ``service`` on the servicer checks its request(s) with ``check_request``."""
    limits = bounds or Bounds()

    def apply(cls: type[T]) -> type[T]:
        for method in service.methods:
            setattr(cls, method.name, _checked(getattr(cls, method.name), method, limits))
        return cls

    return apply


def _checked(handler: Callable[..., Any], method: MethodDescriptor, bounds: Bounds) -> Callable[..., Any]:
    if method.client_streaming:

        async def checked_stream(requests: AsyncIterator[Message]) -> AsyncIterator[Message]:
            async for request in requests:
                check_request(request, bounds)
                yield request

        @functools.wraps(handler)
        async def from_stream(self: Any, requests: AsyncIterator[Message], context: Any) -> Any:
            return await handler(self, checked_stream(requests), context)

        return from_stream
    if method.server_streaming:

        @functools.wraps(handler)
        async def to_stream(self: Any, request: Message, context: Any) -> AsyncIterator[Any]:
            check_request(request, bounds)
            async for answer in handler(self, request, context):
                yield answer

        return to_stream

    @functools.wraps(handler)
    async def unary(self: Any, request: Message, context: Any) -> Any:
        check_request(request, bounds)
        return await handler(self, request, context)

    return unary
