"""IngestService: translates proto requests to calls of the domain modules and back."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from psycopg_pool import AsyncConnectionPool

from distillery.common.v1 import common_pb2
from distillery.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from services.common import auth
from services.common.errors import InvalidArgument
from services.common.objects import ObjectStore
from services.common.protoconv import Bounds, bounded, page_size, timestamp
from services.ingest import dataset_rows, datasets, intake, splits, tool_list, tools, traffic, traffic_datasets, uploads


def _counts(counts: dict[str, int]) -> list[ingest_pb2.CodeCount]:
    return [ingest_pb2.CodeCount(code=c, count=n) for c, n in sorted(counts.items())]


def report_pb(report: dict[str, Any]) -> ingest_pb2.ValidationReport:
    """From ``Report.to_json()``, as stored with the dataset."""
    counts, warning_counts = report.get("counts", {}), report.get("warning_counts", {})
    return ingest_pb2.ValidationReport(
        valid=report.get("valid", False),
        rows=report.get("rows", 0),
        violations=[common_pb2.Violation(**v) for v in report.get("violations", [])],
        warnings=[common_pb2.Violation(**v) for v in report.get("warnings", [])],
        counts=_counts(counts),
        violation_count=sum(counts.values()),
        warning_counts=_counts(warning_counts),
        warning_count=sum(warning_counts.values()) or len(report.get("warnings", [])),
    )


def dataset_pb(d: datasets.Dataset) -> ingest_pb2.Dataset:
    return ingest_pb2.Dataset(
        id=d.id, display_name=d.display_name, kind=d.kind, source_format=d.source_format,
        source_sha256=d.source_sha256, size_bytes=d.size_bytes, rows=d.rows, valid=d.valid,
        created_at=timestamp(d.created_at), report=report_pb(d.report) if d.report else None,
        canonical_key=d.canonical_key,
    )  # fmt: skip


def split_pb(s: splits.Split) -> ingest_pb2.Split:
    return ingest_pb2.Split(
        id=s.id, dataset_id=s.dataset_id, train_rows=s.train_rows, eval_rows=s.eval_rows,
        overlap_removed=s.overlap_removed, train_key=s.train_key, eval_key=s.eval_key,
        eval_dataset_id=s.eval_dataset_id, eval_fraction=s.eval_fraction, seed=s.seed,
    )  # fmt: skip


def tool_pb(t: tool_list.StoredTool) -> ingest_pb2.Tool:
    return ingest_pb2.Tool(
        id=t.id, name=t.name, description=t.description, parameters_json=json.dumps(t.parameters, ensure_ascii=False),
        source=t.source, created_at=timestamp(t.created_at),
    )  # fmt: skip


def traffic_pb(r: traffic.Record) -> ingest_pb2.TrafficRecord:
    return ingest_pb2.TrafficRecord(
        id=r.id, model=r.model, source=r.source, metadata=r.metadata, request_json=r.request_json,
        response_json=r.response_json, prompt_tokens=r.prompt_tokens, completion_tokens=r.completion_tokens,
        created_at=timestamp(r.created_at),
    )  # fmt: skip


def _since(request: Any) -> datetime | None:
    return traffic.check_since(request.since) if request.HasField("since") else None


def outcome_pb(outcome: intake.Outcome) -> ingest_pb2.UploadDatasetResponse:
    return ingest_pb2.UploadDatasetResponse(
        dataset=dataset_pb(outcome.dataset) if outcome.dataset is not None else None,  # None: an empty upload
        report=report_pb(outcome.report), reused=outcome.reused, upload_id=outcome.upload_id,
    )  # fmt: skip


async def _header(request_iterator: AsyncIterator[Any]) -> Any:
    first = await anext(aiter(request_iterator), None)
    if first is None or not first.HasField("header"):
        raise InvalidArgument("the first message of an upload must be its header", field="header")
    return first.header


async def _chunks(request_iterator: AsyncIterator[Any]) -> AsyncIterator[tuple[int, bytes]]:
    async for message in request_iterator:
        if not message.HasField("chunk"):
            raise InvalidArgument("only the first message of an upload may be a header", field="header")
        yield message.chunk.file, message.chunk.data


# Beyond protoconv's defaults (ids, names, texts of 64 KiB, lists of 1,000, numbers >= 0): docs/api.md.
BOUNDS = Bounds(
    strings={"header.manifest": 1024, "header.files.name": 1024,
             "record.request_json": traffic.MAX_REQUEST_CHARS, "record.response_json": traffic.MAX_RESPONSE_CHARS},
    lists={"header.files": 100_000},
    numbers={"header.max_clip_seconds": (0.0, 3600.0), "header.context_tokens": (0, 1_048_576),
             "chunk.file": (0, 100_000),
             "eval_fraction": (-math.inf, math.inf)},  # finite here; its range and hint are splits.py's
)  # fmt: skip


@bounded(ingest_pb2.DESCRIPTOR.services_by_name["IngestService"], BOUNDS)
class IngestServicer(ingest_pb2_grpc.IngestServiceServicer):
    def __init__(
        self, pool: AsyncConnectionPool, store: ObjectStore, intake: intake.Intake, max_upload_bytes: int
    ) -> None:
        self.pool = pool
        self.store = store
        self.intake = intake
        self.max_upload_bytes = max_upload_bytes

    async def UploadDataset(
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> ingest_pb2.UploadDatasetResponse:
        header = await _header(request_iterator)
        plan = uploads.plan_of(header, self.max_upload_bytes)
        outcome = await self.intake.upload(
            auth.current_caller().tenant_id, plan, header.upload_id, header.offset, _chunks(request_iterator)
        )
        return outcome_pb(outcome)

    async def ValidateDataset(self, request_iterator: Any, context: Any) -> ingest_pb2.ValidationReport:
        """Check an upload without storing anything."""
        header = await _header(request_iterator)
        report = await self.intake.validate(uploads.plan_of(header, self.max_upload_bytes), _chunks(request_iterator))
        return report_pb(report.to_json())

    async def CreateUploadUrl(self, request: Any, context: Any) -> ingest_pb2.CreateUploadUrlResponse:
        plan = uploads.plan_of(request.header, self.max_upload_bytes)
        presigned = await self.intake.create_upload_url(auth.current_caller().tenant_id, plan, request.header.upload_id)
        return ingest_pb2.CreateUploadUrlResponse(
            upload_id=presigned.upload_id, url=presigned.urls[0][1] if not plan.is_bundle else "",
            expires_at=timestamp(presigned.expires_at),
            files=[ingest_pb2.PresignedFile(name=n, url=u) for n, u in presigned.urls],
        )  # fmt: skip

    async def RegisterUpload(self, request: Any, context: Any) -> ingest_pb2.UploadDatasetResponse:
        return outcome_pb(await self.intake.register_upload(auth.current_caller().tenant_id, request.upload_id))

    async def GetUploadStatus(self, request: Any, context: Any) -> ingest_pb2.GetUploadStatusResponse:
        session = await self.intake.upload_status(auth.current_caller().tenant_id, request.upload_id)
        return ingest_pb2.GetUploadStatusResponse(
            upload_id=session.id, acknowledged_offset=session.acknowledged, size_bytes=session.size_bytes
        )

    async def GetDataset(self, request: Any, context: Any) -> ingest_pb2.Dataset:
        return dataset_pb(await datasets.get(self.pool, auth.current_caller().tenant_id, request.id))

    async def ListDatasets(self, request: Any, context: Any) -> ingest_pb2.ListDatasetsResponse:
        found, next_token = await datasets.list_page(
            self.pool, auth.current_caller().tenant_id, request.kind, page_size(request.page), request.page.page_token
        )
        return ingest_pb2.ListDatasetsResponse(
            datasets=[dataset_pb(d) for d in found], page={"next_page_token": next_token}
        )

    async def SplitDataset(self, request: Any, context: Any) -> ingest_pb2.Split:
        split = await splits.split_dataset(
            self.pool, self.store, auth.current_caller().tenant_id, request.dataset_id,
            eval_dataset_id=request.eval_dataset_id, eval_fraction=request.eval_fraction, seed=request.seed,
        )  # fmt: skip
        return split_pb(split)

    async def ReadDatasetRows(self, request: Any, context: Any) -> ingest_pb2.ReadDatasetRowsResponse:
        rows = await dataset_rows.read_rows(
            self.pool, self.store, auth.current_caller().tenant_id, request.dataset_id, request.side, request.limit
        )
        return ingest_pb2.ReadDatasetRowsResponse(
            rows_json=rows.lines, kind=rows.kind, split_id=rows.split_id, total_rows=rows.total,
            truncated=rows.truncated,
        )  # fmt: skip

    async def ImportTools(self, request: Any, context: Any) -> ingest_pb2.ImportToolsResponse:
        """Add the document's tools to the active list, or nothing when any of them is invalid."""
        found, report = await asyncio.to_thread(tools.import_document, request.document, request.filename)
        checked = report_pb(report.to_json())
        if report.counts:
            return ingest_pb2.ImportToolsResponse(violations=checked.violations, warnings=checked.warnings)
        if request.plain_language:
            found = [dataclasses.replace(t, source=ingest_pb2.TOOL_SOURCE_PLAIN_LANGUAGE) for t in found]
        stored = await tool_list.add(self.pool, auth.current_caller().tenant_id, found, replace=request.replace)
        return ingest_pb2.ImportToolsResponse(tools=[tool_pb(t) for t in stored], warnings=checked.warnings)

    async def ListTools(self, request: Any, context: Any) -> ingest_pb2.ListToolsResponse:
        found = await tool_list.list_all(self.pool, auth.current_caller().tenant_id)
        return ingest_pb2.ListToolsResponse(tools=[tool_pb(t) for t in found])

    async def DeleteTool(self, request: Any, context: Any) -> ingest_pb2.DeleteToolResponse:
        await tool_list.delete(self.pool, auth.current_caller().tenant_id, request.id)
        return ingest_pb2.DeleteToolResponse()

    async def CaptureTraffic(self, request: Any, context: Any) -> ingest_pb2.TrafficRecord:
        r = request.record
        checked = traffic.checked_record(r.model, r.source, dict(r.metadata), r.request_json, r.response_json)
        stored = await traffic.capture(
            self.pool, auth.current_caller().tenant_id, checked, r.prompt_tokens, r.completion_tokens
        )
        return traffic_pb(stored)

    async def ListTraffic(self, request: Any, context: Any) -> ingest_pb2.ListTrafficResponse:
        filters = traffic.Filters(traffic.check_tags(dict(request.metadata)), traffic.check_model(request.model),
                                  _since(request))  # fmt: skip
        found, next_token = await traffic.list_page(
            self.pool, auth.current_caller().tenant_id, filters, page_size(request.page), request.page.page_token
        )
        return ingest_pb2.ListTrafficResponse(
            records=[traffic_pb(r) for r in found], page={"next_page_token": next_token}
        )

    async def CreateDatasetFromTraffic(self, request: Any, context: Any) -> ingest_pb2.DatasetFromTraffic:
        made = await traffic_datasets.from_traffic(
            self.pool, self.store, self.intake, auth.current_caller().tenant_id, dict(request.metadata),
            kind=request.kind, since=_since(request), limit=request.limit, display_name=request.display_name,
            max_upload_bytes=self.max_upload_bytes, system_prompt=request.system_prompt,
        )  # fmt: skip
        return ingest_pb2.DatasetFromTraffic(
            upload=outcome_pb(made.outcome), records=made.records, left_out_eval=made.left_out_eval,
            left_out_kind=made.left_out_kind,
        )  # fmt: skip
