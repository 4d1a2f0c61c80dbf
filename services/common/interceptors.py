"""The two server interceptors every service runs, outermost first:

- ``ErrorInterceptor`` maps typed domain errors to gRPC status codes (the table in
  ARCHITECTURE.md) and writes one JSON access-log line per call.
- ``AuthInterceptor`` resolves the caller's API key to a tenant (``auth.current_caller``)
  for every method except the open ones (health, reflection, and those a service names).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import grpc
import psycopg
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from services.common import auth
from services.common.errors import DistilleryError, QuotaExceeded, Unauthenticated

log = logging.getLogger("distillery.rpc")

ALWAYS_OPEN = ("/grpc.health.v1.Health/", "/grpc.reflection.")

Guard = Callable[[grpc.aio.ServicerContext], AbstractAsyncContextManager[None]]


def wrap_handler(handler: grpc.RpcMethodHandler, guard: Guard) -> grpc.RpcMethodHandler:
    """Run every call of ``handler`` inside ``async with guard(context)``."""
    if handler is None:
        return None
    if handler.unary_unary or handler.stream_unary:
        inner: Any = handler.unary_unary or handler.stream_unary

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            async with guard(context):
                return await inner(request, context)

        make = grpc.unary_unary_rpc_method_handler if handler.unary_unary else grpc.stream_unary_rpc_method_handler
        return make(unary, handler.request_deserializer, handler.response_serializer)

    inner_stream: Any = handler.unary_stream or handler.stream_stream

    async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async with guard(context):
            async for item in inner_stream(request, context):
                yield item

    make = grpc.unary_stream_rpc_method_handler if handler.unary_stream else grpc.stream_stream_rpc_method_handler
    return make(stream, handler.request_deserializer, handler.response_serializer)


def _status_for(err: DistilleryError) -> grpc.Status:
    """A google.rpc.Status with the details a client can act on."""
    details: list[any_pb2.Any] = []
    if isinstance(err, QuotaExceeded):
        failure = error_details_pb2.QuotaFailure(
            violations=[error_details_pb2.QuotaFailure.Violation(subject=err.subject, description=err.description)]
        )
        details.append(_pack(failure))
    if err.field:
        bad = error_details_pb2.BadRequest(
            field_violations=[error_details_pb2.BadRequest.FieldViolation(field=err.field, description=err.message)]
        )
        details.append(_pack(bad))
    code = err.status.value[0]
    return rpc_status.to_status(status_pb2.Status(code=code, message=err.message, details=details))


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method = details.method
        if method.startswith(ALWAYS_OPEN):
            return handler

        @asynccontextmanager
        async def guard(context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
            started = time.perf_counter()
            code = "OK"
            try:
                yield
            except grpc.aio.AbortError:
                code = context.code().name if context.code() else "ABORTED"
                raise
            except DistilleryError as err:
                status = _status_for(err)
                code = err.status.name
                await context.abort(status.code, status.details, status.trailing_metadata)
            except psycopg.OperationalError:
                code = "UNAVAILABLE"
                log.exception("database unavailable in %s", method)
                await context.abort(grpc.StatusCode.UNAVAILABLE, "the database is unavailable; try again shortly")
            except Exception:
                code = "INTERNAL"
                incident = uuid.uuid4().hex[:12]
                log.exception("unhandled error in %s (incident %s)", method, incident)
                await context.abort(
                    grpc.StatusCode.INTERNAL, f"internal error (incident {incident}); see the service log"
                )
            finally:
                caller = auth.caller_or_none()
                fields = {"method": method, "code": code, "ms": round((time.perf_counter() - started) * 1000, 2)}
                if caller:
                    fields["tenant"] = caller.tenant_id
                log.info("rpc %s %s", method, code, extra={"fields": fields})

        return wrap_handler(handler, guard)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Requires ``authorization: Bearer <api key>`` on every method not in ``open_methods``.

    Another service may instead send the shared service token with the tenant it acts for
    (``auth.service_metadata``): the trainer does so when it drives a run in the background.
    """

    def __init__(self, resolve: auth.KeyResolver, open_methods: Collection[str] = (), service_token: str = "") -> None:
        self._resolve = resolve
        self._open = set(open_methods)
        self._service_token = service_token

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if details.method.startswith(ALWAYS_OPEN) or details.method in self._open:
            return handler

        @asynccontextmanager
        async def guard(context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
            key = auth.bearer_token(context.invocation_metadata())
            if key is None:
                raise Unauthenticated(
                    "no API key: send 'authorization: Bearer <key>' (the CLI reads DISTILLERY_API_KEY "
                    "or the key `distillery up` stored)"
                )
            # Each RPC runs in a task of its own, so the caller never leaks into another call;
            # it stays set for the access-log line the ErrorInterceptor writes.
            if self._service_token and auth.same_secret(key, self._service_token):
                auth.set_caller(auth.service_caller(context.invocation_metadata()))
            else:
                auth.set_caller(await self._resolve(key))
            yield

        return wrap_handler(handler, guard)


# The code numbers google.rpc uses are the gRPC ones; keep the import honest for readers.
assert grpc.StatusCode.RESOURCE_EXHAUSTED.value[0] == code_pb2.RESOURCE_EXHAUSTED
