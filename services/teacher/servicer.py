"""TeacherService: translates proto requests to calls of the domain modules and back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from psycopg_pool import AsyncConnectionPool

from distillery.teacher.v1 import teacher_pb2, teacher_pb2_grpc
from services.common import auth
from services.common.errors import InvalidArgument, Unimplemented
from services.common.protoconv import timestamp
from services.teacher import keys

_LATER = "provider keys and generation jobs arrive with the teacher service's providers"


class TeacherServicer(teacher_pb2_grpc.TeacherServiceServicer):
    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool

    async def ListProviderKeys(self, request: Any, context: Any) -> teacher_pb2.ListProviderKeysResponse:
        found = await keys.list_keys(self.pool, auth.current_caller().tenant_id)
        return teacher_pb2.ListProviderKeysResponse(
            keys=[
                teacher_pb2.ProviderKey(
                    provider=k.provider,
                    last4=k.last4,
                    created_at=timestamp(k.created_at),
                    checked_at=timestamp(k.checked_at),
                )
                for k in found
            ]
        )

    async def DeleteProviderKey(self, request: Any, context: Any) -> teacher_pb2.DeleteProviderKeyResponse:
        if request.provider == teacher_pb2.PROVIDER_UNSPECIFIED:
            raise InvalidArgument("provider is required: openai, anthropic or google", field="provider")
        await keys.delete_key(self.pool, auth.current_caller().tenant_id, request.provider)
        return teacher_pb2.DeleteProviderKeyResponse()

    async def SetProviderKey(self, request: Any, context: Any) -> teacher_pb2.ProviderKey:
        raise Unimplemented(_LATER)

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

    async def DescribeTool(self, request: Any, context: Any) -> teacher_pb2.DescribeToolResponse:
        raise Unimplemented(_LATER)
