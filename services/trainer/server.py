"""Wires the trainer service: database, S3, the peers it calls, Ray, the run supervisor, servicer."""

from __future__ import annotations

from pathlib import Path

import grpc

from distillery.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from services.common import auth
from services.common.backends import open_backends, registry_keys
from services.common.server import RunningServer, start_server
from services.trainer import run_recipes, runs
from services.trainer.access import ACCESS
from services.trainer.job_access import JobAccess, verify_push
from services.trainer.peers import Peers
from services.trainer.pipeline import Pipeline
from services.trainer.ray_jobs import RayJobs
from services.trainer.servicer import TrainerServicer
from services.trainer.settings import Settings
from services.trainer.supervisor import Supervisor

SCHEMA = "trainer"
MIGRATIONS = Path(__file__).parent / "migrations"


async def create(settings: Settings) -> RunningServer:
    recipes = run_recipes.load(settings.recipes_file)  # first: a bad file stops the start, naming file and field
    backends = await open_backends(settings.database_url, SCHEMA, MIGRATIONS, settings.s3)
    registry, resolve_key = registry_keys(settings.registry_address, settings.server.rpc_timeout_s)
    peers = Peers(
        settings.ingest_address, settings.registry_address, settings.teacher_address,
        settings.server.service_token, settings.server.rpc_timeout_s,
    )  # fmt: skip
    pipeline = Pipeline(
        pool=backends.pool, store=backends.store, s3=settings.s3, peers=peers,
        jobs=RayJobs(settings.ray_address, settings.ray_token()),
        train_workers=settings.train_workers, train_use_gpu=settings.train_use_gpu,
        worker_groups=settings.worker_groups,
        access=JobAccess(
            backends.store, settings.s3, settings.job_s3_access, settings.run_token_lifetime_s,
            settings.job_secrets_url_s, settings.job_cache_dir,
        ),
    )  # fmt: skip
    supervisor = Supervisor(backends.pool, pipeline, settings.lease_s, settings.students(), recipes)

    async def verify_run(token: str, run_id: str) -> auth.Caller:
        """A training job pushes with its run's current token, while the run is not final and the token has not
        expired (``job_access.verify_push``; only the token's hash is kept)."""
        return verify_push(await runs.find_active_job(backends.pool, run_id), token)

    def register(server: grpc.aio.Server) -> list[str]:
        trainer_pb2_grpc.add_TrainerServiceServicer_to_server(TrainerServicer(backends.pool, supervisor), server)
        return [trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"].full_name]

    running = await start_server(
        address=settings.server.grpc_address,
        service_token=settings.server.service_token,
        register=register,
        access=ACCESS,
        resolve_key=resolve_key,
        verify_run=verify_run,
        cleanups=[backends.pool.close, registry.close, peers.close, supervisor.stop],  # type: ignore[list-item]
        dependencies=backends.problems,
    )
    # Training jobs push progress here; when bound to port 0, the port is known only now.
    host = settings.server.grpc_address.rsplit(":", 1)[0]
    pipeline.push_address = (
        settings.push_address or f"{'127.0.0.1' if host in ('', '0.0.0.0', '[::]') else host}:{running.port}"
    )
    await supervisor.start()
    return running
