"""Build and runtime foundations: stubs match protos, migrations, a dependency down, settings."""

from __future__ import annotations

import subprocess
import sys

import grpc
import pytest

from distillery.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from services.common import db
from services.common.errors import InvalidArgument
from services.common.settings import ServerSettings
from services.ingest import server as ingest_server
from services.ingest.settings import Settings as IngestSettings


def test_committed_stubs_match_the_protos():
    done = subprocess.run([sys.executable, "-m", "distillery.protos_build", "--check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "stubs match" in done.stdout


def test_migrations_apply_once(services):
    from services.registry.server import MIGRATIONS

    assert services.loop.run(db.migrate(services.postgres_url, "registry", MIGRATIONS)) == []
    versions = sorted(int(path.name[:4]) for path in MIGRATIONS.glob("*.sql"))
    assert versions[:2] == [1, 2]
    assert services.loop.run(db.migrate(services.postgres_url, "scratch_schema", MIGRATIONS)) == versions
    assert services.loop.run(db.migrate(services.postgres_url, "scratch_schema", MIGRATIONS)) == []


def test_a_service_whose_registry_is_down_answers_unavailable(services, make_tenant):
    """Keys are checked through the registry; with it gone, calls fail fast with UNAVAILABLE."""
    settings = IngestSettings(
        ServerSettings(grpc_address="127.0.0.1:0", rpc_timeout_s=2.0), services.postgres_url, services.s3,
        registry_address="127.0.0.1:1", max_upload_bytes=1024,
    )  # fmt: skip
    running = services.loop.run(ingest_server.create(settings))
    try:
        with grpc.insecure_channel(running.address) as channel, pytest.raises(grpc.RpcError) as err:
            ingest_pb2_grpc.IngestServiceStub(channel).ListDatasets(
                ingest_pb2.ListDatasetsRequest(), metadata=[("authorization", f"Bearer {make_tenant().api_key}")],
                timeout=10,
            )  # fmt: skip
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "registry" in err.value.details()
    finally:
        services.loop.run(running.stop(0.5))


def test_settings_errors_name_the_variable(monkeypatch):
    monkeypatch.setenv("DISTILLERY_TRACING", "zipkin")
    with pytest.raises(InvalidArgument, match="DISTILLERY_TRACING"):
        ServerSettings.from_env()
    monkeypatch.setenv("DISTILLERY_TRACING", "none")
    monkeypatch.setenv("DISTILLERY_RPC_TIMEOUT_S", "soon")
    with pytest.raises(InvalidArgument, match="DISTILLERY_RPC_TIMEOUT_S"):
        ServerSettings.from_env()


def test_a_service_process_stops_gracefully_on_sigterm(services, tmp_path):
    """`python -m services.registry` serves health, then exits 0 on SIGTERM, logging JSON."""
    import json
    import os
    import signal

    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from distillery.stack.servers import free_port, wait_for

    port = free_port()
    env = {
        **os.environ, "DISTILLERY_GRPC_ADDRESS": f"127.0.0.1:{port}", "DISTILLERY_DATABASE_URL": services.postgres_url,
        "DISTILLERY_S3_ENDPOINT": services.s3.endpoint, "DISTILLERY_S3_ACCESS_KEY": services.s3.access_key,
        "DISTILLERY_S3_SECRET_KEY": services.s3.secret_key, "DISTILLERY_S3_BUCKET": services.s3.bucket,
        "DISTILLERY_ADMIN_TOKEN": services.admin_token,
    }  # fmt: skip
    log = tmp_path / "registry.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "services.registry"], env=env, stderr=out)

    def serving() -> bool:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
            except grpc.RpcError:
                return False
            return reply.status == health_pb2.HealthCheckResponse.SERVING

    try:
        wait_for(serving, "registry process", 30, proc)  # type: ignore[arg-type]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    messages = [line["msg"] for line in lines]
    assert any(m.startswith("listening on 127.0.0.1:") for m in messages)
    assert messages[-1] == "stopped"
    assert services.admin_token not in log.read_text()
