"""Wires the trainer service: database, S3, key resolution through the registry, servicer."""

from __future__ import annotations

from pathlib import Path

import grpc

from distillery.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from services.common.backends import open_backends, registry_keys
from services.common.server import RunningServer, start_server
from services.trainer.servicer import TrainerServicer
from services.trainer.settings import Settings

SCHEMA = "trainer"
MIGRATIONS = Path(__file__).parent / "migrations"


async def create(settings: Settings) -> RunningServer:
    backends = await open_backends(settings.database_url, SCHEMA, MIGRATIONS, settings.s3)
    registry, resolve_key = registry_keys(settings.registry_address, settings.server.rpc_timeout_s)

    def register(server: grpc.aio.Server) -> list[str]:
        trainer_pb2_grpc.add_TrainerServiceServicer_to_server(TrainerServicer(backends.pool), server)
        return [trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"].full_name]

    return await start_server(
        address=settings.server.grpc_address,
        register=register,
        resolve_key=resolve_key,
        cleanups=[backends.pool.close, registry.close],  # type: ignore[list-item]
    )
