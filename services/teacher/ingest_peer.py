"""The teacher's calls to ingest on a tenant's behalf (the shared service token and the
job's tenant): read a dataset's record, list the tenant's active tools, and upload
generated rows (pairs, or tool-calling trajectories) as a new dataset, checked by ingest
exactly like a user's upload."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc

from distillery.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from services.common import auth
from services.common.clients import domain_error, service_channel
from services.common.errors import FailedPrecondition

CHUNK_BYTES = 1024 * 1024


class Ingest:
    def __init__(self, address: str, service_token: str, timeout_s: float) -> None:
        self._token = service_token
        self._channel = service_channel(address, timeout_s) if address else None
        self.stub: Any = ingest_pb2_grpc.IngestServiceStub(self._channel) if self._channel else None

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close(None)

    def _stub(self) -> Any:
        if self.stub is None:
            raise FailedPrecondition("the teacher has no ingest address: set DISTILLERY_INGEST_ADDRESS")
        return self.stub

    async def get_dataset(self, tenant_id: str, dataset_id: str) -> ingest_pb2.Dataset:
        try:
            return await self._stub().GetDataset(
                ingest_pb2.GetDatasetRequest(id=dataset_id), metadata=auth.service_metadata(self._token, tenant_id)
            )
        except grpc.aio.AioRpcError as err:
            raise domain_error(err, "ingest") from None

    async def list_tools(self, tenant_id: str) -> list[ingest_pb2.Tool]:
        try:
            listed = await self._stub().ListTools(
                ingest_pb2.ListToolsRequest(), metadata=auth.service_metadata(self._token, tenant_id)
            )
        except grpc.aio.AioRpcError as err:
            raise domain_error(err, "ingest") from None
        return list(listed.tools)

    async def upload_pairs(self, tenant_id: str, path: Path, display_name: str) -> ingest_pb2.UploadDatasetResponse:
        return await self.upload(tenant_id, path, display_name, ingest_pb2.DATASET_KIND_PAIRS)

    async def upload_tool_calls(
        self, tenant_id: str, path: Path, display_name: str
    ) -> ingest_pb2.UploadDatasetResponse:
        return await self.upload(tenant_id, path, display_name, ingest_pb2.DATASET_KIND_TOOL_CALLS)

    async def upload(
        self, tenant_id: str, path: Path, display_name: str, kind: ingest_pb2.DatasetKind.ValueType
    ) -> ingest_pb2.UploadDatasetResponse:
        """Upload a JSONL file as a dataset of ``kind``."""
        digest = hashlib.sha256()
        with path.open("rb") as f:
            while block := f.read(CHUNK_BYTES):
                digest.update(block)
        header = ingest_pb2.UploadHeader(
            filename=path.name, kind=kind, format=ingest_pb2.FILE_FORMAT_JSONL,
            size_bytes=path.stat().st_size, sha256=digest.hexdigest(), display_name=display_name,
        )  # fmt: skip

        async def parts() -> AsyncIterator[ingest_pb2.UploadDatasetRequest]:
            yield ingest_pb2.UploadDatasetRequest(header=header)
            with path.open("rb") as f:
                while block := f.read(CHUNK_BYTES):
                    yield ingest_pb2.UploadDatasetRequest(chunk=ingest_pb2.Chunk(data=block))

        try:
            return await self._stub().UploadDataset(parts(), metadata=auth.service_metadata(self._token, tenant_id))
        except grpc.aio.AioRpcError as err:
            raise domain_error(err, "ingest") from None
