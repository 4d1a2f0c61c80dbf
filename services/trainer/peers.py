"""The calls the trainer makes to ingest and the registry on a tenant's behalf.

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
from services.common import auth
from services.common.clients import domain_error, service_channel


class Peers:
    def __init__(self, ingest_address: str, registry_address: str, service_token: str, timeout_s: float) -> None:
        self._token = service_token
        self._ingest_channel = service_channel(ingest_address, timeout_s)
        self._registry_channel = service_channel(registry_address, timeout_s)
        self.ingest = ingest_pb2_grpc.IngestServiceStub(self._ingest_channel)
        self.registry = registry_pb2_grpc.RegistryServiceStub(self._registry_channel)

    async def close(self) -> None:
        await self._ingest_channel.close(None)
        await self._registry_channel.close(None)

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

    async def register(self, tenant_id: str, model: dict[str, Any], training_config: dict[str, Any]) -> str:
        request = registry_pb2.RegisterModelRequest(**model)
        config = struct_pb2.Struct()
        json_format.ParseDict(training_config, config)
        request.training_config.CopyFrom(config)
        registered = await self._call("registry", self.registry.RegisterModel, request, tenant_id)
        return str(registered.id)
