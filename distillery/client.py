"""The Python SDK's connection layer: where the services are, who is calling, and stubs.

Addresses come from ``DISTILLERY_<SERVICE>_ADDRESS`` (host:port) or, for the local
stack, from ``$DISTILLERY_HOME/stack.json`` written by ``distillery up``. The API key
comes from ``DISTILLERY_API_KEY`` or ``$DISTILLERY_HOME/credentials.json``.
Every call carries the key, a deadline and the trace context.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import grpc

from distillery.ingest.v1 import ingest_pb2_grpc
from distillery.registry.v1 import registry_pb2_grpc
from distillery.teacher.v1 import teacher_pb2_grpc
from distillery.trainer.v1 import trainer_pb2_grpc

SERVICES = ("registry", "ingest", "teacher", "trainer")
DEFAULT_TIMEOUT_S = 30.0


def traced_sync_channel(channel: grpc.Channel) -> grpc.Channel:
    """``channel`` with its calls carrying the trace context, so a CLI call and the calls the
    services make for it share one trace (OpenTelemetry's gRPC client interceptor)."""
    from opentelemetry.instrumentation.grpc import client_interceptor, intercept_channel

    return intercept_channel(channel, client_interceptor())


def home() -> Path:
    """The local stack's data directory: DISTILLERY_HOME, default ~/.distillery."""
    return Path(os.environ.get("DISTILLERY_HOME") or "~/.distillery").expanduser().resolve()


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def service_addresses(root: Path | None = None) -> dict[str, str]:
    """host:port of each service; the environment wins over the local stack's state."""
    state = read_json((root or home()) / "stack.json") or {}
    parts = state.get("parts", {})
    addresses = {}
    for name in SERVICES:
        address = os.environ.get(f"DISTILLERY_{name.upper()}_ADDRESS") or parts.get(name, {}).get("address")
        if address:
            addresses[name] = address
    return addresses


def api_key(root: Path | None = None) -> str | None:
    key = os.environ.get("DISTILLERY_API_KEY")
    if key:
        return key
    creds = read_json((root or home()) / "credentials.json") or {}
    value = creds.get("api_key")
    return value if isinstance(value, str) else None


class _Metadata(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor, grpc.StreamUnaryClientInterceptor):  # type: ignore[misc]
    """Adds the API key and a default deadline to every call."""

    def __init__(self, key: str | None, timeout: float) -> None:
        self.key = key
        self.timeout = timeout

    def _details(self, details: Any) -> Any:
        metadata = list(details.metadata or [])
        if self.key:
            metadata.append(("authorization", f"Bearer {self.key}"))
        return details._replace(metadata=metadata, timeout=details.timeout or self.timeout)

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return continuation(self._details(details), request_iterator)


class Client:
    """Synchronous stubs for the four services.

    >>> client = Client.from_environment()
    >>> client.registry.GetQuota(registry_pb2.GetQuotaRequest())
    """

    def __init__(self, addresses: dict[str, str], key: str | None, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.addresses = addresses
        self._channels: dict[str, grpc.Channel] = {}
        self._metadata = _Metadata(key, timeout)

    @classmethod
    def from_environment(cls, timeout: float = DEFAULT_TIMEOUT_S) -> Client:
        return cls(service_addresses(), api_key(), timeout)

    def channel(self, service: str) -> grpc.Channel:
        if service not in self._channels:
            address = self.addresses.get(service)
            if not address:
                raise LookupError(
                    f"no address for the {service} service: start the local stack with `distillery up`, "
                    f"or set DISTILLERY_{service.upper()}_ADDRESS"
                )
            traced = traced_sync_channel(grpc.insecure_channel(address))
            self._channels[service] = grpc.intercept_channel(traced, self._metadata)  # type: ignore[arg-type]
        return self._channels[service]

    @property
    def registry(self) -> registry_pb2_grpc.RegistryServiceStub:
        return registry_pb2_grpc.RegistryServiceStub(self.channel("registry"))

    @property
    def ingest(self) -> ingest_pb2_grpc.IngestServiceStub:
        return ingest_pb2_grpc.IngestServiceStub(self.channel("ingest"))

    @property
    def teacher(self) -> teacher_pb2_grpc.TeacherServiceStub:
        return teacher_pb2_grpc.TeacherServiceStub(self.channel("teacher"))

    @property
    def trainer(self) -> trainer_pb2_grpc.TrainerServiceStub:
        return trainer_pb2_grpc.TrainerServiceStub(self.channel("trainer"))

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()
