"""IngestService: translates proto requests to calls of the domain modules and back."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

from psycopg_pool import AsyncConnectionPool

from distillery.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from services.common import auth
from services.common.errors import InvalidArgument, Unimplemented
from services.common.objects import ObjectStore, tenant_key
from services.common.protoconv import page_size, timestamp
from services.ingest import datasets

_FILENAME = re.compile(r"^[^/\\\x00]{1,255}$")


def dataset_pb(d: datasets.Dataset) -> ingest_pb2.Dataset:
    return ingest_pb2.Dataset(
        id=d.id, display_name=d.display_name, kind=d.kind, source_format=d.source_format,
        source_sha256=d.source_sha256, size_bytes=d.size_bytes, rows=d.rows, valid=d.valid,
        created_at=timestamp(d.created_at),
    )  # fmt: skip


class IngestServicer(ingest_pb2_grpc.IngestServiceServicer):
    def __init__(self, pool: AsyncConnectionPool, store: ObjectStore, max_upload_bytes: int) -> None:
        self.pool = pool
        self.store = store
        self.max_upload_bytes = max_upload_bytes

    async def UploadDataset(
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> ingest_pb2.UploadDatasetResponse:
        tenant_id = auth.current_caller().tenant_id
        first = await anext(aiter(request_iterator), None)
        if first is None or not first.HasField("header"):
            raise InvalidArgument("the first message of an upload must be its header", field="header")
        header = first.header
        if not _FILENAME.match(header.filename):
            raise InvalidArgument(
                "filename must be a plain file name (no folders), 1-255 characters", field="header.filename"
            )
        if header.kind == ingest_pb2.DATASET_KIND_UNSPECIFIED:
            raise InvalidArgument("kind is required: pairs, inputs, asr, ocr or tool_calls", field="header.kind")

        async def chunks() -> AsyncIterator[bytes]:
            async for message in request_iterator:
                if not message.HasField("chunk"):
                    raise InvalidArgument("only the first message of an upload may be a header", field="header")
                yield message.chunk.data

        received = await datasets.receive(
            chunks(), declared_size=header.size_bytes, declared_sha256=header.sha256, limit=self.max_upload_bytes
        )
        try:
            ds_id = datasets.dataset_id(received.sha256)
            existing = await datasets.find(self.pool, tenant_id, ds_id)
            if existing is not None:
                return ingest_pb2.UploadDatasetResponse(dataset=dataset_pb(existing), reused=True)
            key = tenant_key(tenant_id, "uploads", received.sha256)
            await asyncio.to_thread(self.store.put_stream, key, received.file, received.size)
        finally:
            received.file.close()
        stored = await datasets.insert(
            self.pool,
            datasets.Dataset(
                tenant_id=tenant_id, id=ds_id, display_name=header.display_name or header.filename, kind=header.kind,
                source_format=header.format, source_sha256=received.sha256, size_bytes=received.size, rows=0,
                valid=False, object_key=key, created_at=None,  # type: ignore[arg-type]
            ),
        )  # fmt: skip
        return ingest_pb2.UploadDatasetResponse(dataset=dataset_pb(stored), reused=False)

    async def GetDataset(self, request: Any, context: Any) -> ingest_pb2.Dataset:
        return dataset_pb(await datasets.get(self.pool, auth.current_caller().tenant_id, request.id))

    async def ListDatasets(self, request: Any, context: Any) -> ingest_pb2.ListDatasetsResponse:
        found, next_token = await datasets.list_page(
            self.pool, auth.current_caller().tenant_id, request.kind, page_size(request.page), request.page.page_token
        )
        return ingest_pb2.ListDatasetsResponse(
            datasets=[dataset_pb(d) for d in found], page={"next_page_token": next_token}
        )

    async def ValidateDataset(self, request_iterator: Any, context: Any) -> ingest_pb2.ValidationReport:
        raise Unimplemented("dataset validation arrives with the fine-tuning text path")

    async def SplitDataset(self, request: Any, context: Any) -> ingest_pb2.Split:
        raise Unimplemented("train/eval splits arrive with the fine-tuning text path")

    async def ImportTools(self, request: Any, context: Any) -> ingest_pb2.ImportToolsResponse:
        raise Unimplemented("tool import arrives with ingest for every data kind")

    async def ListTools(self, request: Any, context: Any) -> ingest_pb2.ListToolsResponse:
        raise Unimplemented("tool import arrives with ingest for every data kind")

    async def DeleteTool(self, request: Any, context: Any) -> ingest_pb2.DeleteToolResponse:
        raise Unimplemented("tool import arrives with ingest for every data kind")

    async def CreateUploadUrl(self, request: Any, context: Any) -> ingest_pb2.CreateUploadUrlResponse:
        raise Unimplemented("presigned uploads arrive with ingest for every data kind")

    async def RegisterUpload(self, request: Any, context: Any) -> ingest_pb2.UploadDatasetResponse:
        raise Unimplemented("presigned uploads arrive with ingest for every data kind")

    async def GetUploadStatus(self, request: Any, context: Any) -> ingest_pb2.GetUploadStatusResponse:
        raise Unimplemented("resumable uploads arrive with ingest for every data kind")
