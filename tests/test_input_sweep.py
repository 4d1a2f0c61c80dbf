"""Every RPC of every service, called with hostile input, answers with a status that is not
INTERNAL (nor UNKNOWN, nor a deadline), in bounded time, and every service is still SERVING after.

Each request is built from the proto descriptors: every field of the request (and of the messages
it holds, a few levels down) set to one kind of hostile value at a time:

    nul        NUL, escape and other control characters in every string (and bytes) field
    long       100,000-character strings
    enum       77, a value no enum of ours has
    negative   -1 in every signed number
    max31      2^31-1 in every number
    huge       the type's largest value (int64, uint64, 1e308 for doubles)
    nan        NaN in every float
    lists      10,000 elements in every repeated field
    forged     a page token the service never gave (named ``page.page_token`` in the refusal)

In the string, number and list variants the enums hold 1 (a known value), so the requests get
past the "which kind" checks to the fields behind them. Client streams get one hostile message;
server streams are read up to their first answer. The tenant is a fresh one, so no hostile id
names anything that exists: a call that would start real work is refused before it starts.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor as d
from google.protobuf import message_factory
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rpc_refusals import named_field

from distillery.ingest.v1 import ingest_pb2
from distillery.registry.v1 import registry_pb2
from distillery.teacher.v1 import teacher_pb2
from distillery.trainer.v1 import trainer_pb2
from services.common import auth
from services.common.auth import Access
from services.ingest.access import ACCESS as INGEST
from services.registry.access import ACCESS as REGISTRY
from services.teacher.access import ACCESS as TEACHER
from services.trainer.access import ACCESS as TRAINER

SERVICES = {
    "registry": (REGISTRY, registry_pb2.DESCRIPTOR.services_by_name["RegistryService"]),
    "ingest": (INGEST, ingest_pb2.DESCRIPTOR.services_by_name["IngestService"]),
    "teacher": (TEACHER, teacher_pb2.DESCRIPTOR.services_by_name["TeacherService"]),
    "trainer": (TRAINER, trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"]),
}
NUL = "ds_\x00\x01\x1b[2J\x7f\u200b\ufeff"
LONG = "x" * 100_000
LIST = 10_000
DEPTH = 3
# What no answer may be, whatever the input.
BROKEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED}
CALL_TIMEOUT_S = 20.0
SLOW_CALL_S = 10.0
# (method, variant) pairs that may answer OK: the hostile value is legitimately acceptable there.
# A list's page_size over its maximum (500) is taken as the maximum.
LISTS = ("ListModels", "ListDatasets", "ListGenerationJobs", "ListRuns", "ListRubrics")
MAY_SUCCEED = {(method, variant) for method in LISTS for variant in ("max31", "huge")}

Int = d.FieldDescriptor
INTS = {Int.CPPTYPE_INT32, Int.CPPTYPE_INT64, Int.CPPTYPE_UINT32, Int.CPPTYPE_UINT64}
FLOATS = {Int.CPPTYPE_FLOAT, Int.CPPTYPE_DOUBLE}
LARGEST = {Int.CPPTYPE_INT32: 2**31 - 1, Int.CPPTYPE_INT64: 2**63 - 1, Int.CPPTYPE_UINT32: 2**32 - 1,
           Int.CPPTYPE_UINT64: 2**64 - 1, Int.CPPTYPE_FLOAT: 3.0e38, Int.CPPTYPE_DOUBLE: 1.0e308}  # fmt: skip


def scalar(field: d.FieldDescriptor, variant: str) -> Any:
    """The hostile value of one scalar field in ``variant``; None leaves the field unset."""
    kind = field.cpp_type
    if kind == Int.CPPTYPE_STRING:
        text = {"nul": NUL, "long": LONG}.get(variant)
        if text is None:
            return None
        return text.encode() if field.type == Int.TYPE_BYTES else text
    if kind == Int.CPPTYPE_ENUM:
        return 77 if variant == "enum" else 1
    if kind in INTS:
        unsigned = kind in (Int.CPPTYPE_UINT32, Int.CPPTYPE_UINT64)
        return {"negative": None if unsigned else -1, "max31": 2**31 - 1, "huge": LARGEST[kind]}.get(variant)
    if kind in FLOATS:
        return {"negative": -1.0, "max31": float(2**31 - 1), "huge": LARGEST[kind], "nan": math.nan}.get(variant)
    return None  # bools: nothing hostile


def fill(message: Message, variant: str, depth: int = 0) -> None:
    """Set every field of ``message`` (the first member of each oneof) to its hostile value in ``variant``."""
    for field in message.DESCRIPTOR.fields:
        oneof = field.containing_oneof
        if oneof is not None and oneof.fields[0] is not field:
            continue
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            fill_map(getattr(message, field.name), field.message_type, variant)
            continue
        repeated = field.is_repeated
        if field.message_type is not None:
            if depth >= DEPTH:
                continue
            if repeated:
                items = getattr(message, field.name)
                if variant == "lists":
                    for _ in range(LIST):
                        items.add()
                else:
                    fill(items.add(), variant, depth + 1)
            else:
                fill(getattr(message, field.name), variant, depth + 1)
            continue
        if repeated and variant == "lists":
            one = "x" if field.cpp_type == Int.CPPTYPE_STRING else 1
            if field.type == Int.TYPE_BYTES:
                one = b"x"
            getattr(message, field.name).extend([one] * LIST)
            continue
        value = scalar(field, variant)
        if value is None:
            continue
        if repeated:
            getattr(message, field.name).append(value)
        else:
            setattr(message, field.name, value)


def fill_map(entries: Any, entry: d.Descriptor, variant: str) -> None:
    key, value = entry.fields_by_name["key"], entry.fields_by_name["value"]
    if value.message_type is not None:
        return
    if variant == "lists":
        for i in range(LIST):
            entries[str(i) if key.cpp_type == Int.CPPTYPE_STRING else i] = scalar(value, "max31") or "x"
        return
    k, v = scalar(key, variant), scalar(value, variant)
    if k is not None and v is not None:
        entries[k] = v


def forged(message: Message) -> bool:
    """The forged-token variant: ``page.page_token`` set to a token no service gave; False without a page."""
    if "page" not in message.DESCRIPTOR.fields_by_name:
        return False
    message.page.page_token = "ds_0123456789abcdef"  # a plausible id, not a token this list gave
    return True


VARIANTS = ("nul", "long", "enum", "negative", "max31", "huge", "nan", "lists")


def hostile(request_type: type[Message]) -> Iterator[tuple[str, Message]]:
    empty = request_type()
    for variant in VARIANTS:
        message = request_type()
        fill(message, variant)
        if variant != "enum" and message.ByteSize() == fill_enums_only(request_type).ByteSize():
            continue  # nothing of this kind in the request
        if message != empty:
            yield variant, message
    message = request_type()
    if forged(message):
        yield "forged", message


def fill_enums_only(request_type: type[Message]) -> Message:
    message = request_type()
    fill(message, "bool")
    return message


def health_ok(services) -> None:
    for name, (table, _) in SERVICES.items():
        with grpc.insecure_channel(services.address(name)) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", table.service):
                reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING, (name, service)


def test_every_rpc_refuses_hostile_input_without_an_internal_error(services, make_tenant):
    tenant = make_tenant()
    as_tenant = [("authorization", f"Bearer {tenant.api_key}")]
    as_service = auth.service_metadata(services.service_token, tenant.tenant_id)
    as_admin = [("authorization", f"Bearer {services.admin_token}")]
    broken: list[str] = []
    succeeded: list[str] = []
    unnamed_token: list[str] = []
    slowest = (0.0, "")
    started = time.monotonic()

    for name, (table, service) in SERVICES.items():
        channel = grpc.insecure_channel(services.address(name))
        try:
            for method in service.methods:
                access = table.methods[method.name]
                if access == Access.OPEN:
                    metadata: list[tuple[str, str]] = []
                elif Access.ADMIN in access:
                    metadata = as_admin
                elif access == Access.SERVICE:
                    metadata = as_service
                else:
                    metadata = as_tenant
                request_type = message_factory.GetMessageClass(method.input_type)
                call = caller(channel, table.service, method)
                for variant, request in hostile(request_type):
                    where = f"{name}.{method.name}[{variant}]"
                    began = time.monotonic()
                    code, details, field = call(request, metadata)
                    took = time.monotonic() - began
                    slowest = max(slowest, (took, where))
                    if code in BROKEN or took > SLOW_CALL_S:
                        broken.append(f"{where}: {code} in {took:.1f}s: {details[:200]}")
                    elif code == grpc.StatusCode.OK and (method.name, variant) not in MAY_SUCCEED:
                        succeeded.append(where)
                    if variant == "forged" and (code != grpc.StatusCode.INVALID_ARGUMENT or field != "page.page_token"):
                        unnamed_token.append(f"{where}: {code} {field!r}: {details[:200]}")
        finally:
            channel.close()

    print(f"sweep: {time.monotonic() - started:.1f}s, slowest call {slowest[1]} ({slowest[0]:.1f}s)")
    problems = [f"broken: {b}" for b in broken]
    problems += [f"page token not refused as page.page_token: {u}" for u in unnamed_token]
    problems += [f"hostile input accepted: {s}" for s in succeeded]
    assert problems == [], "\n".join(problems)
    health_ok(services)


def caller(
    channel: grpc.Channel, service: str, method: d.MethodDescriptor
) -> Callable[[Message, list[tuple[str, str]]], tuple[grpc.StatusCode, str, str]]:
    """A call of ``method`` taking one request (a client stream gets it as its only message; a
    server stream is read up to its first answer): its status code, details and named field."""
    path = f"/{service}/{method.name}"

    def serialize(message: Message) -> bytes:
        return message.SerializeToString()

    def call(request: Message, metadata: list[tuple[str, str]]) -> tuple[grpc.StatusCode, str, str]:
        try:
            if method.client_streaming:
                stub = channel.stream_unary(path, request_serializer=serialize, response_deserializer=bytes)
                stub(iter([request]), metadata=metadata, timeout=CALL_TIMEOUT_S)
            elif method.server_streaming:
                stream = channel.unary_stream(path, request_serializer=serialize, response_deserializer=bytes)
                answers = stream(request, metadata=metadata, timeout=CALL_TIMEOUT_S)
                try:
                    next(iter(answers), None)
                finally:
                    answers.cancel()
            else:
                stub = channel.unary_unary(path, request_serializer=serialize, response_deserializer=bytes)
                stub(request, metadata=metadata, timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.CANCELLED and method.server_streaming:
                return grpc.StatusCode.OK, "", ""
            return err.code(), err.details() or "", named_field(err)
        return grpc.StatusCode.OK, "", ""

    return call


@pytest.mark.parametrize("request_type", [trainer_pb2.CreateRunRequest, ingest_pb2.UploadDatasetRequest])
def test_the_hostile_requests_are_what_they_say(request_type: type[Message]) -> None:
    variants = dict(hostile(request_type))
    assert set(variants) >= {"nul", "long", "enum", "negative", "huge", "lists"}
    nul = variants["nul"]
    assert any("\x00" in v for f, v in nul.ListFields() if isinstance(v, str)) or nul.WhichOneof("part") == "header"


def test_a_page_token_holds_for_its_list_and_tenant_only() -> None:
    from services.common import paging
    from services.common.errors import InvalidArgument

    token = paging.page_token("datasets", "t_a", "ds_1")
    assert paging.row_after("datasets", "t_a", token) == "ds_1" and paging.row_after("datasets", "t_a", "") == ""
    altered = token.replace("ds_1", "ds_2", 1)
    for table, tenant, given in (("datasets", "t_b", token), ("models", "t_a", token), ("datasets", "t_a", altered),
                                 ("datasets", "t_a", "ds_1"), ("datasets", "t_a", "x" * 300)):  # fmt: skip
        with pytest.raises(InvalidArgument) as refused:
            paging.row_after(table, tenant, given)
        assert refused.value.field == "page.page_token"
