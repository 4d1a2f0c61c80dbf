"""TeacherService: translates proto requests to calls of the domain modules and back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Any

from psycopg_pool import AsyncConnectionPool

from distillery.common.v1 import common_pb2
from distillery.teacher.v1 import teacher_pb2, teacher_pb2_grpc
from services.common import auth
from services.common.errors import Unimplemented
from services.common.protoconv import struct, timestamp
from services.teacher import tool_descriptions
from services.teacher.keys import KeyStore, StoredKey
from services.teacher.settings import Settings

_LATER = "generation jobs arrive with the teacher service's generation engine"


def provider_name(provider: int) -> str:
    """``PROVIDER_OPENAI`` -> "openai"; "" for PROVIDER_UNSPECIFIED or a number this version does not know."""
    if provider == teacher_pb2.PROVIDER_UNSPECIFIED or provider not in teacher_pb2.Provider.values():
        return ""
    return teacher_pb2.Provider.Name(provider).removeprefix("PROVIDER_").lower()


def provider_key_pb(key: StoredKey) -> teacher_pb2.ProviderKey:
    return teacher_pb2.ProviderKey(
        provider=teacher_pb2.Provider.Value(f"PROVIDER_{key.provider.upper()}"),
        last4=key.last4,
        created_at=timestamp(key.created_at),
        checked_at=timestamp(key.checked_at),
    )


class TeacherServicer(teacher_pb2_grpc.TeacherServiceServicer):
    def __init__(self, pool: AsyncConnectionPool, settings: Settings, keys: KeyStore) -> None:
        self.pool = pool
        self.settings = settings
        self.keys = keys

    async def SetProviderKey(self, request: Any, context: Any) -> teacher_pb2.ProviderKey:
        stored = await self.keys.set(
            auth.current_caller().tenant_id, provider_name(request.provider), request.api_key, request.skip_check
        )
        return provider_key_pb(stored)

    async def ListProviderKeys(self, request: Any, context: Any) -> teacher_pb2.ListProviderKeysResponse:
        found = await self.keys.list(auth.current_caller().tenant_id)
        return teacher_pb2.ListProviderKeysResponse(keys=[provider_key_pb(k) for k in found])

    async def DeleteProviderKey(self, request: Any, context: Any) -> teacher_pb2.DeleteProviderKeyResponse:
        await self.keys.delete(auth.current_caller().tenant_id, provider_name(request.provider))
        return teacher_pb2.DeleteProviderKeyResponse()

    async def DescribeTool(self, request: Any, context: Any) -> teacher_pb2.DescribeToolResponse:
        described = await tool_descriptions.describe(
            self.keys,
            auth.current_caller().tenant_id,
            request.teacher,
            request.description,
            attempts=self.settings.max_attempts,
            max_backoff_s=self.settings.max_backoff_s,
        )
        violations = [common_pb2.Violation(**asdict(v)) for v in described.report.violations]
        if described.tool is not None:
            tool = described.tool
            return teacher_pb2.DescribeToolResponse(
                name=tool.name, description=tool.description, parameters=struct(tool.parameters), violations=violations
            )
        answer = described.answer or {}
        name, text, parameters = answer.get("name"), answer.get("description"), answer.get("parameters")
        return teacher_pb2.DescribeToolResponse(
            name=name if isinstance(name, str) else "",
            description=text if isinstance(text, str) else "",
            parameters=struct(parameters) if isinstance(parameters, dict) else None,
            violations=violations,
        )

    async def EstimateJob(self, request: Any, context: Any) -> teacher_pb2.JobEstimate:
        raise Unimplemented(_LATER)

    async def CreateGenerationJob(self, request: Any, context: Any) -> teacher_pb2.GenerationJob:
        raise Unimplemented(_LATER)

    async def GetGenerationJob(self, request: Any, context: Any) -> teacher_pb2.GenerationJob:
        raise Unimplemented(_LATER)

    async def ListGenerationJobs(self, request: Any, context: Any) -> teacher_pb2.ListGenerationJobsResponse:
        raise Unimplemented(_LATER)

    async def CancelGenerationJob(self, request: Any, context: Any) -> teacher_pb2.GenerationJob:
        raise Unimplemented(_LATER)

    async def WatchGenerationJob(self, request: Any, context: Any) -> AsyncIterator[teacher_pb2.GenerationJob]:
        raise Unimplemented(_LATER)
        yield  # a server stream
