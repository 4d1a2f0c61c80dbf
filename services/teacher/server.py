"""Wires the teacher service: database, S3, key resolution through the registry, key store, ingest,
the job runner (started once the server listens), servicer."""

from __future__ import annotations

import logging
from pathlib import Path

import grpc

from distillery.teacher.v1 import teacher_pb2, teacher_pb2_grpc
from services.common.backends import open_backends, registry_keys
from services.common.errors import DistilleryError
from services.common.server import RunningServer, start_server
from services.teacher.access import ACCESS
from services.teacher.ingest_peer import Ingest
from services.teacher.job_runner import JobRunner
from services.teacher.keys import KeyStore
from services.teacher.servicer import TeacherServicer
from services.teacher.settings import Settings

SCHEMA = "teacher"
MIGRATIONS = Path(__file__).parent / "migrations"

log = logging.getLogger("distillery.teacher")


async def create(settings: Settings) -> RunningServer:
    backends = await open_backends(settings.database_url, SCHEMA, MIGRATIONS, settings.s3)
    registry, resolve_key = registry_keys(settings.registry_address, settings.server.rpc_timeout_s)
    keys = KeyStore(backends.pool, settings)
    try:
        keys.master()
    except DistilleryError as err:  # the service still serves the platform teacher and deployment keys
        log.warning("tenants cannot bring their own provider keys: %s", err.message)

    ingest = Ingest(settings.ingest_address, settings.server.service_token, settings.server.rpc_timeout_s)
    runner = JobRunner(backends.pool, backends.store, keys, ingest, settings)

    def register(server: grpc.aio.Server) -> list[str]:
        servicer = TeacherServicer(backends.pool, settings, keys, runner)
        teacher_pb2_grpc.add_TeacherServiceServicer_to_server(servicer, server)
        return [teacher_pb2.DESCRIPTOR.services_by_name["TeacherService"].full_name]

    running = await start_server(
        address=settings.server.grpc_address,
        service_token=settings.server.service_token,
        register=register,
        access=ACCESS,
        resolve_key=resolve_key,
        cleanups=[backends.pool.close, registry.close, ingest.close, runner.stop],  # type: ignore[list-item]
        dependencies=backends.problems,
    )
    await runner.start()
    return running
