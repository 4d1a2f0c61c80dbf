"""Health checks of the stack's parts; each returns (healthy, why not) within a couple of seconds."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

CHECK_TIMEOUT_S = 2.0


def postgres(url: str) -> tuple[bool, str]:
    """A real connection and ``SELECT 1``."""
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=int(CHECK_TIMEOUT_S)) as conn:
            conn.execute("SELECT 1").fetchone()
    except psycopg.Error as err:
        return False, f"cannot connect: {str(err).strip().splitlines()[0]}"
    return True, ""


def _s3_client(address: str, access_key: str, secret_key: str) -> object:
    import urllib3
    from minio import Minio

    # No retries and short timeouts: a status check must not hang on a dead server.
    http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=1.0, read=CHECK_TIMEOUT_S), retries=False)
    return Minio(address, access_key=access_key, secret_key=secret_key, secure=False, http_client=http)


def s3(address: str, access_key: str, secret_key: str) -> tuple[bool, str]:
    """List the buckets with the stack's keys."""
    client = _s3_client(address, access_key, secret_key)
    try:
        client.list_buckets()  # type: ignore[attr-defined]
    except Exception as err:  # minio raises several unrelated types
        return False, f"cannot list buckets: {type(err).__name__}"
    return True, ""


def ensure_bucket(address: str, access_key: str, secret_key: str, bucket: str) -> None:
    client = _s3_client(address, access_key, secret_key)
    if not client.bucket_exists(bucket):  # type: ignore[attr-defined]
        client.make_bucket(bucket)  # type: ignore[attr-defined]


def http_ok(url: str) -> tuple[bool, str]:
    """A GET of ``url`` answers 200 (the gateway's /health)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=CHECK_TIMEOUT_S) as response:
            return (True, "") if response.status == 200 else (False, f"{url} answered {response.status}")
    except urllib.error.HTTPError as err:
        return False, f"{url} answered {err.code}"
    except (OSError, ValueError) as err:
        return False, f"{url} does not answer ({type(err).__name__})"


def grpc_service(address: str, service: str = "") -> tuple[bool, str]:
    """The standard gRPC health check (grpc.health.v1) of ``service`` ("" = the server)."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=CHECK_TIMEOUT_S)
        except grpc.RpcError as err:
            return False, f"health check failed: {err.code().name}"  # type: ignore[attr-defined]
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    return status == "SERVING", "" if status == "SERVING" else status
