"""Errors in OpenAI's shape, and the one place where the services' errors become HTTP statuses.

Every error the endpoint answers is ``{"error": {"message", "type", "param", "code"}}`` with the
status OpenAI uses for it: 400 invalid_request_error, 401 authentication_error, 403
permission_error, 404 (a model that does not exist, or is another tenant's, or is not
deployed), 413 (body too large), 429 (quota), 500/502/503 (server, upstream, unavailable).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import grpc

from services.common.clients import domain_error
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


@dataclass
class ApiError(Exception):
    status: int
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None

    def body(self) -> bytes:
        error = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        return json.dumps({"error": error}).encode()


def invalid(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, "invalid_request_error", param, code)


def unauthorized(message: str) -> ApiError:
    return ApiError(401, message, "authentication_error", None, "invalid_api_key")


def model_not_found(model: str) -> ApiError:
    """What a model that does not exist and another tenant's model both look like."""
    return ApiError(
        404,
        f"The model `{model}` does not exist or you do not have access to it: see `distillery models list`",
        "invalid_request_error",
        "model",
        "model_not_found",
    )


def from_domain(err: DistilleryError) -> ApiError:
    """The HTTP error of a typed error (ours, or another service's through ``domain_error``)."""
    param = err.field or None
    if isinstance(err, InvalidArgument | FailedPrecondition):
        return ApiError(400, err.message, "invalid_request_error", param)
    if isinstance(err, NotFound):
        return ApiError(404, err.message, "invalid_request_error", param, "not_found")
    if isinstance(err, AlreadyExists):
        return ApiError(409, err.message, "invalid_request_error", param)
    if isinstance(err, Unauthenticated):
        return unauthorized(err.message)
    if isinstance(err, PermissionDenied):
        return ApiError(403, err.message, "permission_error", param)
    if isinstance(err, QuotaExceeded):
        return ApiError(429, err.message, "rate_limit_error", None, "insufficient_quota")
    if isinstance(err, Unavailable):
        return ApiError(503, err.message, "server_error", None, "service_unavailable")
    if isinstance(err, Unimplemented):
        return ApiError(501, err.message, "server_error", None, "not_implemented")
    return ApiError(500, err.message, "server_error")


def from_rpc(err: grpc.aio.AioRpcError, service: str) -> ApiError:
    """The HTTP error of another service's gRPC status."""
    if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
        message = f"the {service} service did not answer in time; try again"
        return ApiError(503, message, "server_error", None, "timeout")
    return from_domain(domain_error(err, service))
