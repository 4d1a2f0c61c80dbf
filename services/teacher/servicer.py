"""TeacherService: translates proto requests to calls of the domain modules and back."""

from __future__ import annotations

from typing import Any

from psycopg_pool import AsyncConnectionPool

from distillery.teacher.v1 import teacher_pb2, teacher_pb2_grpc
from services.common import auth
from services.common.errors import InvalidArgument, Unimplemented
from services.common.protoconv import timestamp
from services.teacher import keys


class TeacherServicer(teacher_pb2_grpc.TeacherServiceServicer):
    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool

    async def ListProviderKeys(self, request: Any, context: Any) -> teacher_pb2.ListProviderKeysResponse:
        found = await keys.list_keys(self.pool, auth.current_caller().tenant_id)
        return teacher_pb2.ListProviderKeysResponse(
            keys=[
                teacher_pb2.ProviderKey(
                    provider=k.provider, last4=k.last4, created_at=timestamp(k.created_at),
                    checked_at=timestamp(k.checked_at),
                )  # fmt: skip
                for k in found
            ]
        )

    async def DeleteProviderKey(self, request: Any, context: Any) -> teacher_pb2.DeleteProviderKeyResponse:
        if request.provider == teacher_pb2.PROVIDER_UNSPECIFIED:
            raise InvalidArgument("provider is required: openai, anthropic or google", field="provider")
        await keys.delete_key(self.pool, auth.current_caller().tenant_id, request.provider)
        return teacher_pb2.DeleteProviderKeyResponse()

    async def SetProviderKey(self, request: Any, context: Any) -> teacher_pb2.ProviderKey:
        raise Unimplemented("storing provider keys arrives with the teacher service's providers")

    async def CreateGenerationJob(self, request: Any, context: Any) -> teacher_pb2.GenerationJob:
        raise Unimplemented("generation jobs arrive with the teacher service's providers")
