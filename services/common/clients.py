"""Outgoing calls from one service to another: channels with tracing and a deadline.

Every call made through ``service_channel`` gets the settings' deadline unless the
caller gives a shorter one, so no call between services can hang forever.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from services.common import tracing


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
