"""Fixtures: a real PostgreSQL, a real S3 server and a real Ray head once per test session,
and the four services as real gRPC servers on ephemeral ports of 127.0.0.1, in one
background event loop.

The teacher talks to fake vendor APIs (``provider_servers``: the real SDKs over loopback),
one per provider, started once per session; the ``providers`` fixture resets them for a test.
openai, anthropic and google have no deployment key: a tenant brings its own.

Tracing goes to an in-memory exporter for the whole session, so a test can read spans.
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import psutil
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from provider_servers import ProviderServer
from vllm_standin import VllmStandin

from distillery.client import Client
from distillery.registry.v1 import registry_pb2, registry_pb2_grpc
from distillery.stack import processes, ray_head, servers
from distillery.tokens import new_admin_token, new_service_token
from services.common.server import RunningServer
from services.common.settings import S3Settings, ServerSettings
from services.gateway import server as gateway_server
from services.gateway.settings import Settings as GatewaySettings
from services.ingest import server as ingest_server
from services.ingest.settings import Settings as IngestSettings
from services.registry import server as registry_server
from services.registry.settings import Settings as RegistrySettings
from services.teacher import server as teacher_server
from services.teacher.settings import ProviderSettings
from services.teacher.settings import Settings as TeacherSettings
from services.trainer import server as trainer_server
from services.trainer.settings import Settings as TrainerSettings

# --- tiers: `make test-fast` runs what starts no service ---

# A test whose fixtures include one of these starts (or shares) a real service: PostgreSQL, S3, the Ray
# head, the four gRPC services, or the platform teacher's llama.cpp server. It is marked ``stack``.
STACK_FIXTURES = frozenset({"postgres_url", "s3_settings", "ray_cluster", "services", "platform_url"})
# Tests that start services themselves, without a fixture (``distillery up``, a llama.cpp server).
STACK_TESTS = frozenset({
    "test_stack.py::test_local_stack_lifecycle",
    "test_platform_teacher.py::test_server_ignores_settings_in_the_environment",
})  # fmt: skip
# Tests that start no service but train a model (seconds to minutes on 2 cores): marked ``slow``.
SLOW_TESTS = frozenset({
    "test_tool_recipe.py::test_grpo_raises_the_reward_where_sft_on_a_noisy_teacher_left_room",
    "test_sft_recipe.py::test_progress_push_sends_ordered_events_with_the_token",
    "test_sft_recipe.py::test_keep_going_false_stops_training",
    "test_sft_recipe.py::test_a_dead_trainer_address_does_not_slow_training",
})  # fmt: skip


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        name = f"{item.path.name}::{item.originalname if isinstance(item, pytest.Function) else item.name}"
        if name in STACK_TESTS or STACK_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.stack)
        if name in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
    modules = {item.path.name: item.module for item in items if isinstance(item, pytest.Function)}
    for name in STACK_TESTS | SLOW_TESTS:  # a renamed test would silently lose its tier
        file, function = name.split("::")
        if file in modules and not hasattr(modules[file], function):
            raise pytest.UsageError(f"tests/conftest.py marks {name}, which is not in {file} any more")


SPANS = InMemorySpanExporter()
_provider = TracerProvider()
_provider.add_span_processor(SimpleSpanProcessor(SPANS))
trace.set_tracer_provider(_provider)

T = TypeVar("T")


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    proc.send_signal(sig)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@pytest.fixture(scope="session")
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="dst-test-", dir="/tmp") as tmp:
        yield Path(tmp)


@pytest.fixture(scope="session")
def postgres_url(workdir: Path) -> Iterator[str]:
    port, password = servers.free_port(), secrets.token_urlsafe(16)
    proc = servers.start_postgres(workdir / "pg", port, password, workdir / "logs" / "postgres.log")
    yield servers.postgres_url(port, password)
    _stop(proc, signal.SIGINT)  # fast shutdown


@pytest.fixture(scope="session")
def s3_settings(workdir: Path) -> Iterator[S3Settings]:
    ports = servers.S3Ports.pick()
    access, secret = "test-" + secrets.token_hex(6), secrets.token_urlsafe(24)
    proc = servers.start_s3(workdir / "s3", ports, access, secret, workdir / "logs" / "s3.log")
    yield S3Settings(endpoint=f"127.0.0.1:{ports.s3}", access_key=access, secret_key=secret, bucket="test-bucket")
    _stop(proc)


@dataclass(frozen=True)
class RayCluster:
    dashboard: str
    token_file: Path
    temp_dir: Path  # the head's --temp-dir: its session logs are under it


@pytest.fixture(scope="session")
def ray_cluster(workdir: Path) -> Iterator[RayCluster]:
    """``ray start --head`` on free ports of 127.0.0.1 with token auth; every process it made stops after."""
    ports = ray_head.RayPorts.pick()
    token_file = workdir / "ray_token"
    ray_head.ensure_token(token_file)
    tag = f"test-{secrets.token_hex(6)}"
    env = {**os.environ, **ray_head.head_env(ports, token_file), processes.STACK_ID_VARIABLE: tag}
    env.pop("RAY_ADDRESS", None)
    temp_dir = Path("/tmp") / f"dst-ray-{secrets.token_hex(5)}" / "r"  # head_command makes its parent 0700
    log = workdir / "logs" / "ray.log"
    proc = processes.spawn(ray_head.head_command(ports, temp_dir, 300 * 1024 * 1024), log, env, cwd=workdir)
    token = token_file.read_text().strip()
    deadline = time.monotonic() + 90
    while not ray_head.health(ports, token)[0]:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the Ray head did not start:\n{processes.tail(log)}")
        time.sleep(0.5)
    yield RayCluster(ray_head.dashboard_url(ports), token_file, temp_dir)
    root = psutil.Process(proc.pid)
    everyone = processes.unique([*processes.tree(root), *processes.tagged_processes(tag).get("", [])])
    processes.stop([processes.StopPlan("ray", root, everyone, grace_s=10)])
    shutil.rmtree(temp_dir.parent, ignore_errors=True)


class EventLoopThread:
    """One asyncio loop in a daemon thread; ``run`` executes a coroutine on it and waits."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@dataclass
class Services:
    loop: EventLoopThread
    admin_token: str
    service_token: str
    running: dict[str, RunningServer]
    postgres_url: str
    s3: S3Settings
    ray: RayCluster
    workdir: Path
    # The teacher's DISTILLERY_MASTER_KEY, and the base URL of each provider's fake API.
    master_key: str = ""
    provider_urls: dict[str, str] = field(default_factory=dict)
    # Where the trainer takes student directories from: pytest's temporary folders, where tests build tiny models.
    model_roots: tuple[str, ...] = ()
    # The gateway's OpenAI-compatible endpoint ("http://127.0.0.1:P"; the SDK's base_url is this + "/v1"),
    # and the vLLM stand-in the registry names as its vLLM upstream (tests/vllm_standin.py).
    gateway_url: str = ""
    vllm_url: str = ""

    def address(self, name: str) -> str:
        return self.running[name].address

    @property
    def addresses(self) -> dict[str, str]:
        return {name: r.address for name, r in self.running.items()}

    async def restart_trainer(self) -> None:
        """Stop the trainer service (its runs and Ray jobs go on) and start a new instance."""
        await self.running["trainer"].stop(1.0)
        self.running["trainer"] = await trainer_server.create(self.trainer_settings())

    def trainer_settings(self) -> TrainerSettings:
        return TrainerSettings(
            server_settings(self.service_token), self.postgres_url, self.s3, self.address("registry"),
            self.address("ingest"), self.address("teacher"), self.ray.dashboard, str(self.ray.token_file),
            lease_s=1.0, model_roots=self.model_roots,
        )  # fmt: skip

    def teacher_settings(self, **changes: Any) -> TeacherSettings:
        """The teacher's settings in tests; ``changes`` replace fields (another master key, other providers)."""
        providers = {
            name: ProviderSettings(base_url=url, api_key="", concurrency=8, requests_per_minute=0)
            for name, url in self.provider_urls.items()
        }
        settings = dict(
            master_key=self.master_key, ingest_address=self.address("ingest"), providers=providers,
            request_timeout_s=2.0, max_attempts=4, max_backoff_s=0.5,
        )  # fmt: skip
        return TeacherSettings(
            server_settings(self.service_token), self.postgres_url, self.s3, self.address("registry"),
            **{**settings, **changes},
        )  # fmt: skip

    def registry_settings(self, **changes: Any) -> RegistrySettings:
        """The registry's settings in tests. Its engine for a deployment is local by default: a registry with
        ``vllm_url`` (test_gateway_vllm starts one beside it, ``vllm_url=services.vllm_url``) deploys on vLLM."""
        return RegistrySettings(
            server_settings(self.service_token), self.postgres_url, self.s3, self.admin_token,
            model_cache_dir=str(self.workdir / "models"), gateway_url=self.gateway_url, **changes,
        )  # fmt: skip

    def gateway_settings(self) -> GatewaySettings:
        return GatewaySettings(
            server_settings(self.service_token), self.address("registry"),
            http_address=self.gateway_url.removeprefix("http://"), teacher_address=self.address("teacher"),
            ingest_address=self.address("ingest"), generate_timeout_s=120.0, vllm_api_key=VLLM_API_KEY,
        )  # fmt: skip


# The key the gateway sends to vLLM upstreams in tests (it must reach the stand-in, and appear nowhere else).
VLLM_API_KEY = "vllm-test-key-" + secrets.token_hex(8)


def server_settings(service_token: str = "") -> ServerSettings:
    return ServerSettings(
        grpc_address="127.0.0.1:0", rpc_timeout_s=5.0, shutdown_grace_s=1.0, service_token=service_token
    )


# Small parts so resumable uploads are tested with files of a few MiB.
INGEST_PART_BYTES = 256 * 1024
INGEST_MAX_UPLOAD_BYTES = 96 * 1024 * 1024


async def start_services(services: Services) -> None:
    pg, s3, token = services.postgres_url, services.s3, services.service_token
    running = services.running
    # The gateway's HTTP port is picked first: the registry gives its URL in deployments and snippets.
    services.gateway_url = f"http://127.0.0.1:{servers.free_port()}"
    running["registry"] = await registry_server.create(services.registry_settings())
    registry = running["registry"].address
    ingest = IngestSettings(
        server_settings(token), pg, s3, registry, max_upload_bytes=INGEST_MAX_UPLOAD_BYTES,
        upload_part_bytes=INGEST_PART_BYTES, work_dir=str(services.workdir),
    )  # fmt: skip
    running["ingest"] = await ingest_server.create(ingest)
    running["teacher"] = await teacher_server.create(services.teacher_settings())
    running["trainer"] = await trainer_server.create(services.trainer_settings())
    running["gateway"] = await gateway_server.create(services.gateway_settings())


# Each provider's fake API speaks this vendor protocol ("platform" is OpenAI-compatible).
FAKE_PROTOCOLS = {"openai": "openai", "anthropic": "anthropic", "google": "google", "platform": "openai"}


@pytest.fixture(scope="session")
def fake_providers() -> Iterator[dict[str, ProviderServer]]:
    """One fake vendor API per provider name, for the whole session."""
    fakes = {name: ProviderServer(protocol).start() for name, protocol in FAKE_PROTOCOLS.items()}
    yield fakes
    for fake in fakes.values():
        fake.stop()


@pytest.fixture
def providers(fake_providers: dict[str, ProviderServer]) -> dict[str, ProviderServer]:
    """The fake vendor APIs, reset: any key accepted, default answers, no calls recorded."""
    for fake in fake_providers.values():
        fake.reset()
    return fake_providers


@pytest.fixture(scope="session")
def vllm_standins() -> Iterator[VllmStandin]:
    """The registry's vLLM upstream in tests: a stand-in at the wire (tests/vllm_standin.py)."""
    standin = VllmStandin().start()
    yield standin
    standin.stop()


@pytest.fixture
def vllm(vllm_standins: VllmStandin) -> VllmStandin:
    """The vLLM stand-in, reset: no adapter loaded, nothing scripted, no request recorded."""
    vllm_standins.reset()
    return vllm_standins


@pytest.fixture(scope="session")
def services(
    postgres_url: str,
    s3_settings: S3Settings,
    ray_cluster: RayCluster,
    workdir: Path,
    fake_providers: dict[str, ProviderServer],
    vllm_standins: VllmStandin,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Services]:
    loop = EventLoopThread()
    services = Services(
        loop, new_admin_token(), new_service_token(), {}, postgres_url, s3_settings, ray_cluster, workdir,
        master_key=base64.b64encode(os.urandom(32)).decode(),
        provider_urls={name: fake.base_url for name, fake in fake_providers.items()},
        model_roots=(os.path.realpath(tmp_path_factory.getbasetemp()),), vllm_url=vllm_standins.url + "/v1",
    )  # fmt: skip
    loop.run(start_services(services))
    running = services.running
    yield services
    for server in reversed(list(running.values())):
        loop.run(server.stop(1.0))
    loop.close()


@dataclass
class TenantKey:
    tenant_id: str
    api_key: str


@pytest.fixture
def make_tenant(services: Services) -> Callable[..., TenantKey]:
    """Create a tenant (unique name) and an API key for it, through the admin token."""

    def make(tier: int = registry_pb2.TIER_STANDARD, allowance: int = 0) -> TenantKey:
        admin = [("authorization", f"Bearer {services.admin_token}")]
        with grpc.insecure_channel(services.address("registry")) as channel:
            stub = registry_pb2_grpc.RegistryServiceStub(channel)
            request = registry_pb2.CreateTenantRequest(
                name=f"t-{secrets.token_hex(5)}", tier=tier, model_allowance=allowance
            )
            tenant = stub.CreateTenant(request, metadata=admin, timeout=10)
            key = stub.CreateApiKey(
                registry_pb2.CreateApiKeyRequest(tenant_id=tenant.id, name="test"), metadata=admin, timeout=10
            )
        return TenantKey(tenant.id, key.secret)

    return make


@pytest.fixture
def client_for(services: Services) -> Iterator[Callable[[TenantKey | None], Client]]:
    made: list[Client] = []

    def make(tenant: TenantKey | None) -> Client:
        client = Client(services.addresses, tenant.api_key if tenant else None, timeout=20)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


class ServiceRegistry:
    """A RegistryService stub that calls as another service does: the service token, acting for one tenant."""

    def __init__(self, channel: grpc.Channel, service_token: str, tenant_id: str) -> None:
        from services.common.auth import service_metadata

        self._stub = registry_pb2_grpc.RegistryServiceStub(channel)
        self._metadata = service_metadata(service_token, tenant_id)

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._stub, name)

        def call(request: Any, timeout: float = 20) -> Any:
            return method(request, metadata=self._metadata, timeout=timeout)

        return call


@pytest.fixture
def service_registry_for(services: Services) -> Iterator[Callable[[TenantKey], ServiceRegistry]]:
    """The registry as the trainer service calls it for ``tenant`` (ReserveQuota, RegisterModel, ...)."""
    channels: list[grpc.Channel] = []

    def make(tenant: TenantKey) -> ServiceRegistry:
        channel = grpc.insecure_channel(services.address("registry"))
        channels.append(channel)
        return ServiceRegistry(channel, services.service_token, tenant.tenant_id)

    yield make
    for channel in channels:
        channel.close()
