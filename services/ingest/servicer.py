"""IngestService: translates proto requests to calls of the domain modules and back."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

from psycopg_pool import AsyncConnectionPool

from distillery.common.v1 import common_pb2
from distillery.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from services.common import auth
from services.common.errors import InvalidArgument, Unimplemented
from services.common.objects import ObjectStore, tenant_key
from services.common.protoconv import page_size, timestamp
from services.ingest import datasets, pairs, splits

_FILENAME = re.compile(r"^[^/\\\x00]{1,255}$")


def report_pb(report: dict[str, Any]) -> ingest_pb2.ValidationReport:
    """From ``Report.to_json()``, as stored with the dataset."""
    counts = report.get("counts", {})
    return ingest_pb2.ValidationReport(
        valid=report.get("valid", False),
        rows=report.get("rows", 0),
        violations=[common_pb2.Violation(**v) for v in report.get("violations", [])],
        warnings=[common_pb2.Violation(**v) for v in report.get("warnings", [])],
        counts=[ingest_pb2.CodeCount(code=c, count=n) for c, n in sorted(counts.items())],
        violation_count=sum(counts.values()),
    )


def dataset_pb(d: datasets.Dataset) -> ingest_pb2.Dataset:
    return ingest_pb2.Dataset(
        id=d.id, display_name=d.display_name, kind=d.kind, source_format=d.source_format,
        source_sha256=d.source_sha256, size_bytes=d.size_bytes, rows=d.rows, valid=d.valid,
        created_at=timestamp(d.created_at), report=report_pb(d.report) if d.report else None,
    )  # fmt: skip


def split_pb(s: splits.Split) -> ingest_pb2.Split:
    return ingest_pb2.Split(
        id=s.id, dataset_id=s.dataset_id, train_rows=s.train_rows, eval_rows=s.eval_rows,
        overlap_removed=s.overlap_removed, train_key=s.train_key, eval_key=s.eval_key,
        eval_dataset_id=s.eval_dataset_id, eval_fraction=s.eval_fraction, seed=s.seed,
    )  # fmt: skip


def is_csv(header: Any) -> bool:
    if header.format == ingest_pb2.FILE_FORMAT_CSV:
        return True
    return header.format == ingest_pb2.FILE_FORMAT_UNSPECIFIED and header.filename.lower().endswith(".csv")


class IngestServicer(ingest_pb2_grpc.IngestServiceServicer):
    def __init__(self, pool: AsyncConnectionPool, store: ObjectStore, max_upload_bytes: int) -> None:
        self.pool = pool
        self.store = store
        self.max_upload_bytes = max_upload_bytes

    async def _receive(self, request_iterator: AsyncIterator[Any]) -> tuple[Any, datasets.Received]:
        """Read an upload stream: its header, then its bytes, size and sha256 checked."""
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
        return header, received

    async def UploadDataset(
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> ingest_pb2.UploadDatasetResponse:
        """Store the bytes as uploaded and, for a valid pairs file, its canonical JSONL; invalid files
        are kept too (nothing is lost) with their report, and cannot be trained on."""
        tenant_id = auth.current_caller().tenant_id
        header, received = await self._receive(request_iterator)
        try:
            ds_id = datasets.dataset_id(received.sha256)
            existing = await datasets.find(self.pool, tenant_id, ds_id)
            if existing is not None:
                return ingest_pb2.UploadDatasetResponse(
                    dataset=dataset_pb(existing), report=report_pb(existing.report), reused=True
                )
            data = received.file.read()
        finally:
            received.file.close()
        key = tenant_key(tenant_id, "uploads", received.sha256)
        await asyncio.to_thread(self.store.put_bytes, key, data)
        report: dict[str, Any] = {}
        canonical_key = ""
        if header.kind == ingest_pb2.DATASET_KIND_PAIRS:
            checked, canonical = await asyncio.to_thread(pairs.validate, data, is_csv(header))
            report = checked.to_json()
            if checked.valid:
                canonical_key = tenant_key(tenant_id, "datasets", ds_id, "canonical.jsonl")
                await asyncio.to_thread(self.store.put_bytes, canonical_key, canonical, "application/jsonl")
        stored = await datasets.insert(
            self.pool,
            datasets.Dataset(
                tenant_id=tenant_id, id=ds_id, display_name=header.display_name or header.filename, kind=header.kind,
                source_format=header.format, source_sha256=received.sha256, size_bytes=received.size,
                rows=report.get("rows", 0), valid=bool(canonical_key), object_key=key, report=report,
                canonical_key=canonical_key, created_at=None,  # type: ignore[arg-type]
            ),
        )  # fmt: skip
        return ingest_pb2.UploadDatasetResponse(dataset=dataset_pb(stored), report=report_pb(report), reused=False)

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
        """Check a file without storing anything."""
        header, received = await self._receive(request_iterator)
        try:
            data = received.file.read()
        finally:
            received.file.close()
        if header.kind != ingest_pb2.DATASET_KIND_PAIRS:
            raise Unimplemented("validation of this kind arrives with ingest for every data kind; pairs works today")
        checked, _ = await asyncio.to_thread(pairs.validate, data, is_csv(header))
        return report_pb(checked.to_json())

    async def SplitDataset(self, request: Any, context: Any) -> ingest_pb2.Split:
        split = await splits.split_dataset(
            self.pool, self.store, auth.current_caller().tenant_id, request.dataset_id,
            eval_dataset_id=request.eval_dataset_id, eval_fraction=request.eval_fraction, seed=request.seed,
        )  # fmt: skip
        return split_pb(split)

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
