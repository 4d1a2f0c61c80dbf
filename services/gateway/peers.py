"""The gateway's gRPC calls to the other services.

The registry and the teacher are called with the tenant's own API key as the bearer, so they
scope everything to that tenant themselves (another tenant's model is NOT_FOUND there). Only
ingest's CaptureTraffic takes the service token and names the tenant. Every call has a
deadline: the settings' RPC timeout, or ``generate_timeout_s`` for an answer.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import grpc

from distillery.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from distillery.registry.v1 import registry_pb2, registry_pb2_grpc
from distillery.teacher.v1 import teacher_pb2, teacher_pb2_grpc
from services.common import auth
from services.common.clients import service_channel
from services.gateway.api_errors import ApiError, from_rpc, unauthorized
from services.gateway.settings import Settings


def key_metadata(api_key: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {api_key}")]


class Peers:
    def __init__(self, settings: Settings) -> None:
        rpc_s, generate_s = settings.server.rpc_timeout_s, settings.generate_timeout_s
        self._token = settings.server.service_token
        self._channels = [service_channel(settings.registry_address, rpc_s)]
        self._registry: Any = registry_pb2_grpc.RegistryServiceStub(self._channels[0])
        # Answers take a model load and a generation: their own channel, with the longer deadline.
        self._channels.append(service_channel(settings.registry_address, generate_s))
        self._generate: Any = registry_pb2_grpc.RegistryServiceStub(self._channels[-1])
        self._teacher: Any = None
        self._ingest: Any = None
        if settings.teacher_address:
            self._channels.append(service_channel(settings.teacher_address, generate_s))
            self._teacher = teacher_pb2_grpc.TeacherServiceStub(self._channels[-1])
        if settings.ingest_address:
            self._channels.append(service_channel(settings.ingest_address, rpc_s))
            self._ingest = ingest_pb2_grpc.IngestServiceStub(self._channels[-1])

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close(None)

    # --- registry -------------------------------------------------------------------------

    async def authenticate(self, api_key: str) -> registry_pb2.AuthenticateKeyResponse:
        try:
            return await self._registry.AuthenticateKey(registry_pb2.AuthenticateKeyRequest(api_key=api_key))
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.UNAUTHENTICATED:
                raise unauthorized("Incorrect API key provided: use a Distillery API key (`distillery keys`)") from None
            raise from_rpc(err, "registry") from None

    async def registry(self, method: str, request: Any, api_key: str) -> Any:
        """One unary registry call as the tenant; its error as an ApiError."""
        try:
            return await getattr(self._registry, method)(request, metadata=key_metadata(api_key))
        except grpc.aio.AioRpcError as err:
            raise from_rpc(err, "registry") from None

    async def answer(self, method: str, request: Any, api_key: str) -> Any:
        """Generate, Transcribe or ReadImage: the longer deadline."""
        try:
            return await getattr(self._generate, method)(request, metadata=key_metadata(api_key))
        except grpc.aio.AioRpcError as err:
            raise from_rpc(err, "registry") from None

    async def generate_stream(
        self, request: registry_pb2.GenerateRequest, api_key: str
    ) -> AsyncGenerator[registry_pb2.GenerateChunk, None]:
        call = self._generate.GenerateStream(request, metadata=key_metadata(api_key))
        try:
            async for chunk in call:
                yield chunk
        except grpc.aio.AioRpcError as err:
            raise from_rpc(err, "registry") from None
        finally:
            call.cancel()

    # --- teacher (proxy mode) ---------------------------------------------------------------

    async def complete(self, request: teacher_pb2.CompleteRequest, api_key: str) -> teacher_pb2.CompleteResponse:
        if self._teacher is None:
            raise ApiError(503, "proxy mode is off: the gateway has no teacher address", "server_error")
        try:
            reply: teacher_pb2.CompleteResponse = await self._teacher.Complete(request, metadata=key_metadata(api_key))
        except grpc.aio.AioRpcError as err:
            raise from_rpc(err, "teacher") from None
        return reply

    # --- ingest (captured traffic) ----------------------------------------------------------

    @property
    def captures(self) -> bool:
        return self._ingest is not None

    async def capture(self, tenant_id: str, record: ingest_pb2.TrafficRecord) -> ingest_pb2.TrafficRecord:
        try:
            stored: ingest_pb2.TrafficRecord = await self._ingest.CaptureTraffic(
                ingest_pb2.CaptureTrafficRequest(record=record), metadata=auth.service_metadata(self._token, tenant_id)
            )
        except grpc.aio.AioRpcError as err:
            raise from_rpc(err, "ingest") from None
        return stored
