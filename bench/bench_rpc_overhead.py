"""What the service runtime costs per call.

Starts a real PostgreSQL, S3 server and registry, then measures, in the same run and
over the same channel, the rate of:

- baseline: grpc health Check (no interceptors, no database)
- GetQuota: tracing + error mapping + API-key authentication + two queries

and prints each rate and the ratio GetQuota / baseline.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
import tempfile
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from distillery.registry.v1 import registry_pb2, registry_pb2_grpc
from distillery.stack import servers
from distillery.tokens import new_admin_token
from services.common.settings import S3Settings, ServerSettings
from services.registry import server as registry_server
from services.registry.settings import Settings

CALLS = 2000
CONCURRENCY = 16


async def rate(call, calls: int = CALLS) -> float:  # type: ignore[no-untyped-def]
    async def worker(n: int) -> None:
        for _ in range(n):
            await call()

    started = time.perf_counter()
    await asyncio.gather(*(worker(calls // CONCURRENCY) for _ in range(CONCURRENCY)))
    return calls / (time.perf_counter() - started)


async def measure(url: str, s3: S3Settings) -> None:
    admin = new_admin_token()
    running = await registry_server.create(Settings(ServerSettings(), url, s3, admin))
    try:
        async with grpc.aio.insecure_channel(running.address) as channel:
            registry = registry_pb2_grpc.RegistryServiceStub(channel)
            admin_md = [("authorization", f"Bearer {admin}")]
            tenant = await registry.CreateTenant(registry_pb2.CreateTenantRequest(name="bench"), metadata=admin_md)
            key = await registry.CreateApiKey(registry_pb2.CreateApiKeyRequest(tenant_id=tenant.id), metadata=admin_md)
            key_md = [("authorization", f"Bearer {key.secret}")]
            health = health_pb2_grpc.HealthStub(channel)

            async def baseline() -> None:
                await health.Check(health_pb2.HealthCheckRequest(), timeout=5)

            async def get_quota() -> None:
                await registry.GetQuota(registry_pb2.GetQuotaRequest(), metadata=key_md, timeout=5)

            await rate(baseline, 200)  # warm up
            await rate(get_quota, 200)
            base, quota = await rate(baseline), await rate(get_quota)
            print(f"baseline health Check: {base:8.0f} calls/s")
            print(f"GetQuota (auth + db):  {quota:8.0f} calls/s")
            print(f"ratio GetQuota / baseline: {quota / base:.2f}")
    finally:
        await running.stop(1.0)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="dst-bench-", dir="/tmp") as tmp:
        work = Path(tmp)
        pg_port, password = servers.free_port(), secrets.token_urlsafe(16)
        pg = servers.start_postgres(work / "pg", pg_port, password, work / "pg.log")
        ports = servers.S3Ports.pick()
        s3 = servers.start_s3(work / "s3", ports, "bench", "bench-secret-123", work / "s3.log")
        try:
            settings = S3Settings(f"127.0.0.1:{ports.s3}", "bench", "bench-secret-123", bucket="bench")
            asyncio.run(measure(servers.postgres_url(pg_port, password), settings))
        finally:
            pg.send_signal(signal.SIGINT)
            s3.terminate()
            pg.wait(15)
            s3.wait(15)


if __name__ == "__main__":
    main()
