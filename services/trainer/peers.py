"""The calls the trainer makes to ingest, the teacher and the registry on a tenant's behalf.

They carry the shared service token and the run's tenant (``auth.service_metadata``),
so a run can be driven in the background, long after the user's own call ended.
Errors come back as the typed errors the other service raised.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import json_format, struct_pb2

from distillery.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from distillery.registry.v1 import registry_pb2, registry_pb2_grpc
from distillery.teacher.v1 import teacher_pb2, teacher_pb2_grpc
from services.common import auth
from services.common.clients import domain_error, service_channel


class Peers:
    def __init__(
        self, ingest_address: str, registry_address: str, teacher_address: str, service_token: str, timeout_s: float
    ) -> None:
        self._token = service_token
        self._channels = [service_channel(a, timeout_s) for a in (ingest_address, registry_address, teacher_address)]
        self.ingest = ingest_pb2_grpc.IngestServiceStub(self._channels[0])
        self.registry = registry_pb2_grpc.RegistryServiceStub(self._channels[1])
        self.teacher = teacher_pb2_grpc.TeacherServiceStub(self._channels[2])

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close(None)

    async def _call(self, service: str, method: Any, request: Any, tenant_id: str) -> Any:
        try:
            return await method(request, metadata=auth.service_metadata(self._token, tenant_id))
        except grpc.aio.AioRpcError as err:
            raise domain_error(err, service) from None

    async def get_dataset(self, tenant_id: str, dataset_id: str) -> ingest_pb2.Dataset:
        request = ingest_pb2.GetDatasetRequest(id=dataset_id)
        return await self._call("ingest", self.ingest.GetDataset, request, tenant_id)

    async def split(
        self, tenant_id: str, dataset_id: str, eval_dataset_id: str, eval_fraction: float, seed: int
    ) -> ingest_pb2.Split:
        request = ingest_pb2.SplitDatasetRequest(
            dataset_id=dataset_id, eval_dataset_id=eval_dataset_id, eval_fraction=eval_fraction, seed=seed
        )
        return await self._call("ingest", self.ingest.SplitDataset, request, tenant_id)

    async def reserve(self, tenant_id: str, run_id: str) -> None:
        await self._call(
            "registry", self.registry.ReserveQuota, registry_pb2.ReserveQuotaRequest(run_id=run_id), tenant_id
        )

    async def release(self, tenant_id: str, run_id: str) -> None:
        await self._call(
            "registry", self.registry.ReleaseQuota, registry_pb2.ReleaseQuotaRequest(run_id=run_id), tenant_id
        )

    async def get_model(self, tenant_id: str, model_id: str) -> registry_pb2.Model:
        request = registry_pb2.GetModelRequest(id=model_id)
        return await self._call("registry", self.registry.GetModel, request, tenant_id)

    async def register(self, tenant_id: str, model: dict[str, Any], training_config: dict[str, Any]) -> str:
        request = registry_pb2.RegisterModelRequest(**model)
        config = struct_pb2.Struct()
        json_format.ParseDict(training_config, config)
        request.training_config.CopyFrom(config)
        registered = await self._call("registry", self.registry.RegisterModel, request, tenant_id)
        return str(registered.id)

    async def check_job(self, tenant_id: str, request: teacher_pb2.CreateGenerationJobRequest) -> None:
        await self._call("teacher", self.teacher.CheckGenerationJob, request, tenant_id)

    async def judge(self, tenant_id: str, request: teacher_pb2.JudgeAnswersRequest) -> teacher_pb2.JudgeAnswersResponse:
        """A rubric's judge criterion scored on some rows (``graders.judge_request`` builds the request)."""
        return await self._call("teacher", self.teacher.JudgeAnswers, request, tenant_id)

    async def estimate_job(
        self, tenant_id: str, request: teacher_pb2.CreateGenerationJobRequest
    ) -> teacher_pb2.JobEstimate:
        return await self._call("teacher", self.teacher.EstimateJob, request, tenant_id)

    async def create_job(
        self, tenant_id: str, request: teacher_pb2.CreateGenerationJobRequest
    ) -> teacher_pb2.GenerationJob:
        return await self._call("teacher", self.teacher.CreateGenerationJob, request, tenant_id)

    async def get_job(self, tenant_id: str, job_id: str) -> teacher_pb2.GenerationJob:
        request = teacher_pb2.GetGenerationJobRequest(id=job_id)
        return await self._call("teacher", self.teacher.GetGenerationJob, request, tenant_id)

    async def cancel_job(self, tenant_id: str, job_id: str) -> None:
        request = teacher_pb2.CancelGenerationJobRequest(id=job_id)
        await self._call("teacher", self.teacher.CancelGenerationJob, request, tenant_id)
