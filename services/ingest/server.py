"""Wires the ingest service: database, S3, key resolution through the registry, servicer."""

from __future__ import annotations

from pathlib import Path

import grpc

from distillery.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from services.common.backends import open_backends, registry_keys
from services.common.server import RunningServer, start_server
from services.ingest.access import ACCESS
from services.ingest.intake import Intake
from services.ingest.servicer import IngestServicer
from services.ingest.settings import Settings

SCHEMA = "ingest"
MIGRATIONS = Path(__file__).parent / "migrations"


async def create(settings: Settings) -> RunningServer:
    backends = await open_backends(settings.database_url, SCHEMA, MIGRATIONS, settings.s3)
    registry, resolve_key = registry_keys(settings.registry_address, settings.server.rpc_timeout_s)

    def register(server: grpc.aio.Server) -> list[str]:
        intake = Intake(
            backends.pool, backends.store, settings.limits, part_bytes=settings.upload_part_bytes,
            presign_expiry_s=settings.presign_expiry_s, work_dir=settings.work_dir or None,
        )  # fmt: skip
        servicer = IngestServicer(backends.pool, backends.store, intake, settings.max_upload_bytes)
        ingest_pb2_grpc.add_IngestServiceServicer_to_server(servicer, server)
        return [ingest_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name]

    return await start_server(
        address=settings.server.grpc_address,
        service_token=settings.server.service_token,
        register=register,
        access=ACCESS,
        resolve_key=resolve_key,
        cleanups=[backends.pool.close, registry.close],  # type: ignore[list-item]
        dependencies=backends.problems,
    )
