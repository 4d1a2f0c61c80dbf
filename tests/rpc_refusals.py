"""Checking a refused gRPC call: the error it raised, its status code, and the request field
named by its google.rpc BadRequest detail (which the services' error interceptor adds to the
status details when a domain error names the field at fault).

    err = refused(lambda: client.trainer.CreateRun(request))   # INVALID_ARGUMENT unless told
    assert field_of(err) == "dataset_id"
    assert_refused(lambda: client.trainer.CreateRun(request), "dataset_id")  # the two at once

Calls are zero-argument callables; in a loop pass ``functools.partial(stub.Method, request)``,
whose repr names the request in a failure message.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status


def raised(call: Callable[[], Any]) -> grpc.RpcError:
    """The gRPC error ``call()`` raises, whatever its code; fails the test when it returns."""
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value


def refused(call: Callable[[], Any], code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT) -> grpc.RpcError:
    """The gRPC error ``call()`` raises, after checking it carries ``code``."""
    err = raised(call)
    assert err.code() == code, f"{call!r}: expected {code}, got {err.code()}: {err.details()}"
    return err


def named_field(err: grpc.RpcError) -> str:
    """The field of the first violation in the error's BadRequest detail; "" when it has none."""
    status = rpc_status.from_call(err)
    for detail in status.details if status else ():
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad) and bad.field_violations:
            return bad.field_violations[0].field
    return ""


def field_of(err: grpc.RpcError) -> str:
    """The field named by the error's BadRequest detail; fails the test when there is none."""
    field = named_field(err)
    if not field:
        raise AssertionError(f"no BadRequest field violation in the error: {err.code()}: {err.details()}")
    return field


def assert_refused(
    call: Callable[[], Any], field: str, code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT
) -> grpc.RpcError:
    """Check ``call()`` is refused with ``code`` naming ``field`` in a BadRequest detail; the error."""
    err = refused(call, code)
    named = field_of(err)
    assert named == field, f"{call!r}: expected field {field!r}, got {named!r}: {err.details()}"
    return err
