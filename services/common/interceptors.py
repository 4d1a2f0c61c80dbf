"""The two server interceptors every service runs, outermost first:

- ``ErrorInterceptor`` maps typed domain errors to gRPC status codes (the table in
  ARCHITECTURE.md) and writes one JSON access-log line per call.
- ``AuthInterceptor`` enforces the service's access table (``auth.AccessTable``: which
  methods are open or take a tenant's key, the service token, the admin token or a run
  token) and sets the caller (``auth.current_caller``); health and reflection are open.
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
import urllib3
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from services.common import auth, ids
from services.common.errors import DistilleryError, PermissionDenied, QuotaExceeded, Unauthenticated

log = logging.getLogger("distillery.rpc")

ALWAYS_OPEN = ("/grpc.health.v1.Health/", "/grpc.reflection.")

Guard = Callable[[grpc.aio.ServicerContext, Any], AbstractAsyncContextManager[None]]


def wrap_handler(handler: grpc.RpcMethodHandler, guard: Guard) -> grpc.RpcMethodHandler:
    """Run every call of ``handler`` inside ``async with guard(context, request)``.

    ``request`` is the request message, or None where the client streams its requests.
    """
    if handler is None:
        return None
    if handler.unary_unary or handler.stream_unary:
        inner: Any = handler.unary_unary or handler.stream_unary

        streamed = handler.stream_unary is not None

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            async with guard(context, None if streamed else request):
                return await inner(request, context)

        make = grpc.unary_unary_rpc_method_handler if handler.unary_unary else grpc.stream_unary_rpc_method_handler
        return make(unary, handler.request_deserializer, handler.response_serializer)

    inner_stream: Any = handler.unary_stream or handler.stream_stream
    streamed_in = handler.stream_stream is not None

    async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async with guard(context, None if streamed_in else request):
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
        async def guard(context: grpc.aio.ServicerContext, request: Any) -> AsyncIterator[None]:
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
            except urllib3.exceptions.HTTPError:  # the object store did not answer in time (or at all)
                code = "UNAVAILABLE"
                log.exception("object store unavailable in %s", method)
                await context.abort(
                    grpc.StatusCode.UNAVAILABLE,
                    "the object store is unavailable; try again shortly (`distillery status` shows its health)",
                )
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
                if caller and caller.tenant_id:
                    fields["tenant"] = caller.tenant_id
                log.info("rpc %s %s", method, code, extra={"fields": fields})

        return wrap_handler(handler, guard)


NO_KEY = (
    "no API key: send 'authorization: Bearer <key>' (the CLI reads DISTILLERY_API_KEY "
    "or the key `distillery up` stored)"
)
NO_ADMIN = "this call needs the registry's admin token (DISTILLERY_ADMIN_TOKEN)"
NO_RUN = "not a valid push token for this run"


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Enforces each service's access table (``auth.AccessTable``) and sets the caller.

    Every method is looked up by its path; one missing from the tables is refused (fail
    closed). By the tokens its entry takes (``auth.Access``):

    - OPEN: nothing is checked and no caller is set.
    - KEY: ``authorization: Bearer <api key>``; the caller is the key's tenant.
    - SERVICE: the shared service token with the tenant it acts for (``auth.service_metadata``):
      the trainer and the teacher call so on a tenant's behalf, in the background.
    - ADMIN: the admin token (``is_admin_token``); the caller is ``auth.ADMIN_CALLER``.
    - RUN: a training job's run token for the run its request names in ``run_id``
      (``verify_run``); the caller is the run's tenant, naming the run.

    A missing or wrong token is Unauthenticated; a tenant's valid key on a service-only
    method is PermissionDenied, with the table's ``why``.
    """

    def __init__(
        self,
        tables: Collection[auth.AccessTable],
        resolve: auth.KeyResolver,
        service_token: str = "",
        is_admin_token: auth.AdminCheck | None = None,
        verify_run: auth.RunVerifier | None = None,
    ) -> None:
        self._access: dict[str, auth.Access] = {}
        self._why: dict[str, str] = {}
        for table in tables:
            self._access.update(table.paths())
            self._why.update({f"/{table.service}/{name}": why for name, why in table.why.items()})
        if verify_run is None and any(auth.Access.RUN in a for a in self._access.values()):
            raise ValueError("a method takes a run token, but no run verifier was given")
        self._resolve = resolve
        self._service_token = service_token
        self._is_admin_token = is_admin_token or (lambda token: False)
        self._verify_run = verify_run

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method = details.method
        if method.startswith(ALWAYS_OPEN) or self._access.get(method) == auth.Access.OPEN:
            return handler

        @asynccontextmanager
        async def guard(context: grpc.aio.ServicerContext, request: Any) -> AsyncIterator[None]:
            # Each RPC runs in a task of its own, so the caller never leaks into another call;
            # it stays set for the access-log line the ErrorInterceptor writes.
            auth.set_caller(await self.authorize(method, context.invocation_metadata(), request))
            yield

        return wrap_handler(handler, guard)

    async def authorize(self, method: str, metadata: Any, request: Any = None) -> auth.Caller | None:
        """The caller of ``method`` (None for an open one); raises Unauthenticated or PermissionDenied.

        ``request`` is the request message (None for a stream of requests): a run token is
        checked against the run it names.
        """
        access = self._access.get(method)
        if access is None:
            raise PermissionDenied(f"{method} has no entry in the service's access table, so nobody may call it")
        if access == auth.Access.OPEN:
            return None
        token = auth.bearer_token(metadata)
        if access == auth.Access.RUN:
            run_id = ids.check_id(getattr(request, "run_id", ""), "run_id")  # before it reaches a query
            if token is None or not run_id or self._verify_run is None:
                raise Unauthenticated(NO_RUN)
            return await self._verify_run(token, run_id)
        if token is None:
            raise Unauthenticated(self._needs(method, access))
        if auth.Access.ADMIN in access and self._is_admin_token(token):
            return auth.ADMIN_CALLER
        if self._service_token and auth.same_secret(token, self._service_token):
            if auth.Access.SERVICE in access:
                return auth.service_caller(metadata)
            raise Unauthenticated(self._needs(method, access))
        if auth.Access.KEY in access:
            return await self._resolve(token)
        if auth.Access.SERVICE in access:  # a service-only method: a wrong key is still Unauthenticated
            await self._resolve(token)
            raise PermissionDenied(self._service_only(method))
        raise Unauthenticated(self._needs(method, access))

    def _needs(self, method: str, access: auth.Access) -> str:
        """What a call without the right token is told."""
        name = method.rsplit("/", 1)[-1]
        if auth.Access.KEY in access and auth.Access.ADMIN in access:
            return f"{name} needs an API key of the tenant or the admin token"
        if auth.Access.KEY in access:
            return NO_KEY
        if auth.Access.ADMIN in access:
            return NO_ADMIN
        return self._service_only(method)

    def _service_only(self, method: str) -> str:
        name, why = method.rsplit("/", 1)[-1], self._why.get(method, "")
        return f"{name} takes the service token only" + (f": {why}" if why else "")


# The code numbers google.rpc uses are the gRPC ones; keep the import honest for readers.
assert grpc.StatusCode.RESOURCE_EXHAUSTED.value[0] == code_pb2.RESOURCE_EXHAUSTED
