"""Wires the registry: database, S3, servicer and the common server runtime."""

from __future__ import annotations

from pathlib import Path

import grpc

from distillery.registry.v1 import registry_pb2, registry_pb2_grpc
from services.common import auth
from services.common.backends import open_backends
from services.common.server import RunningServer, start_server
from services.registry import tenants, transcribe
from services.registry.access import ACCESS
from services.registry.deployments import Deployments
from services.registry.exports import Exporter
from services.registry.generate import Generator
from services.registry.servicer import RegistryServicer
from services.registry.settings import Settings

SCHEMA = "registry"
MIGRATIONS = Path(__file__).parent / "migrations"
# Transcribe takes a clip of up to transcribe.MAX_AUDIO_BYTES in one message.
MAX_REQUEST_BYTES = transcribe.MAX_AUDIO_BYTES + 1024 * 1024


async def create(settings: Settings) -> RunningServer:
    backends = await open_backends(settings.database_url, SCHEMA, MIGRATIONS, settings.s3)
    pool = backends.pool

    async def resolve(key: str) -> auth.Caller:
        return await tenants.authenticate(pool, key)

    def is_admin_token(token: str) -> bool:
        return bool(settings.admin_token) and auth.same_secret(token, settings.admin_token)

    generator = Generator(backends.store, Path(settings.model_cache_dir), max_loaded=settings.max_loaded_models)
    deployer = Deployments(pool, generator, settings.vllm_url, settings.vllm_dedicated_url)
    converter = Path(settings.gguf_converter).expanduser() if settings.gguf_converter else None
    exporter = Exporter(backends.store, Path(settings.model_cache_dir) / ".exports", converter)

    def register(server: grpc.aio.Server) -> list[str]:
        registry_pb2_grpc.add_RegistryServiceServicer_to_server(
            RegistryServicer(
                pool, backends.store, generator, exporter, deployer=deployer, gateway_url=settings.gateway_url
            ),
            server,
        )
        return [registry_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name]

    return await start_server(
        address=settings.server.grpc_address,
        service_token=settings.server.service_token,
        register=register,
        access=ACCESS,
        resolve_key=resolve,  # no cache here: a revoked key stops at once
        is_admin_token=is_admin_token,
        cleanups=[pool.close],
        dependencies=backends.problems,
        max_message_bytes=MAX_REQUEST_BYTES,
    )
