"""Typed domain errors.

Domain code raises these; one server interceptor (``interceptors.ErrorInterceptor``)
turns them into gRPC status codes, so servicers never pick status codes themselves.
Messages are shown to users as they are: say what is wrong and what to do.
"""

from __future__ import annotations

import grpc


class DistilleryError(Exception):
    """Base of every error a user may see. ``status`` is the gRPC code it maps to."""

    status: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, *, field: str = "") -> None:
        super().__init__(message)
        self.message = message
        # The request field at fault, when there is one; added to the status details.
        self.field = field


class InvalidArgument(DistilleryError):
    """A bad request or spec."""

    status = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(DistilleryError):
    """Missing, or owned by another tenant (never tell the two apart)."""

    status = grpc.StatusCode.NOT_FOUND


class AlreadyExists(DistilleryError):
    status = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(DistilleryError):
    """The object is in the wrong state for the call."""

    status = grpc.StatusCode.FAILED_PRECONDITION


class Unauthenticated(DistilleryError):
    """No key, or a bad or revoked key."""

    status = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(DistilleryError):
    status = grpc.StatusCode.PERMISSION_DENIED


class Unavailable(DistilleryError):
    """A dependency (database, S3, another service, Ray) is down."""

    status = grpc.StatusCode.UNAVAILABLE


class Unimplemented(DistilleryError):
    """A part of the v1 surface that this version does not serve yet."""

    status = grpc.StatusCode.UNIMPLEMENTED


class QuotaExceeded(DistilleryError):
    """An allowance is full. Carries a QuotaFailure detail (subject, description)."""

    status = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, *, subject: str, description: str) -> None:
        super().__init__(message)
        self.subject = subject
        self.description = description
