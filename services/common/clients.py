"""Outgoing calls from one service to another: channels with tracing and a deadline.

Every call made through ``service_channel`` gets the settings' deadline unless the
caller gives a shorter one, so no call between services can hang forever.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from services.common import tracing
from services.common.errors import (
    AlreadyExists,
    DistilleryError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    QuotaExceeded,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)


class _Deadline(
    grpc.aio.UnaryUnaryClientInterceptor,
    grpc.aio.UnaryStreamClientInterceptor,
    grpc.aio.StreamUnaryClientInterceptor,
):
    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s

    def _with_deadline(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        timeout = self.timeout_s if details.timeout is None else min(details.timeout, self.timeout_s)
        return grpc.aio.ClientCallDetails(
            details.method, timeout, details.metadata, details.credentials, details.wait_for_ready
        )

    async def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return await continuation(self._with_deadline(details), request)

    async def intercept_unary_stream(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return await continuation(self._with_deadline(details), request)

    async def intercept_stream_unary(self, continuation: Callable[..., Any], details: Any, request_iter: Any) -> Any:
        return await continuation(self._with_deadline(details), request_iter)


def service_channel(address: str, timeout_s: float) -> grpc.aio.Channel:
    """An aio channel to another service; tracing context and a deadline on every call."""
    interceptors = [*tracing.aio_client_interceptors(), _Deadline(timeout_s)]
    return grpc.aio.insecure_channel(address, interceptors=interceptors)  # type: ignore[arg-type]


_DOMAIN_ERRORS: dict[grpc.StatusCode, type[DistilleryError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.UNIMPLEMENTED: Unimplemented,
}


def domain_error(err: grpc.aio.AioRpcError, service: str) -> DistilleryError:
    """The typed error behind another service's status, so it passes on to our caller unchanged."""
    message = err.details() or err.code().name
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    details = status.details if status else ()
    if err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
        for detail in details:
            failure = error_details_pb2.QuotaFailure()
            if detail.Unpack(failure) and failure.violations:
                found = failure.violations[0]
                return QuotaExceeded(message, subject=found.subject, description=found.description)
        return QuotaExceeded(message, subject="", description=message)
    if err.code() in _DOMAIN_ERRORS:
        field = ""
        for detail in details:
            bad = error_details_pb2.BadRequest()
            if detail.Unpack(bad) and bad.field_violations:
                field = bad.field_violations[0].field
        return _DOMAIN_ERRORS[err.code()](message, field=field)
    if err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return Unavailable(f"the {service} service is unavailable ({err.code().name}); try again shortly")
    return DistilleryError(f"the {service} service failed: {message}")
