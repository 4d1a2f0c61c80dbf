"""The rendered chart's wiring, proved against the code: every service is started on this machine from its
Deployment's own command, args and environment (ConfigMap and Secret references resolved from the render; the
Secrets the chart only names are supplied here, as an operator would create them), with the chart's DNS names
mapped to loopback: its Services to free ports, its PostgreSQL, object store and Ray head to the tests' real
ones. The migration Job runs first, from its rendered command. Each service must answer gRPC health SERVING and
one authenticated call; the gateway its HTTP /health and /v1/models.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import network_policies
import pytest
from conftest import RayCluster
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helm_chart import (
    NAMESPACE,
    ROOT,
    SERVICES,
    Doc,
    Rendered,
    Sources,
    container,
    empty_dir_mounts,
    render,
    resolved_env,
    secret_mounts,
)
from network_policies import selects

from distillery.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from distillery.registry.v1 import registry_pb2, registry_pb2_grpc
from distillery.stack import servers
from distillery.teacher.v1 import teacher_pb2, teacher_pb2_grpc
from distillery.tokens import new_admin_token, new_service_token
from distillery.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from services.common.settings import S3Settings

# The Secrets the chart names instead of generating them (secrets.generate false), as an operator makes them.
SECRET, MASTER_KEY_SECRET, RAY_TOKEN_SECRET = "smoke-secrets", "smoke-master-key", "smoke-ray-token"
VALUES = {
    "secrets": {"generate": False, "existingSecret": SECRET, "masterKey": {"existingSecret": MASTER_KEY_SECRET}},
    "ray": {"auth": {"existingSecret": RAY_TOKEN_SECRET}},
    "settings": {"shutdownGraceSeconds": 1},
}
STARTUP_S = 60


def _host_port(address: str) -> tuple[str, int]:
    host, port = address.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


class Loopback:
    """The cluster's names, as host:port, and where each is on this machine."""

    def __init__(self, chart: Rendered, postgres: str, s3: str, ray_dashboard: str) -> None:
        self.addresses: dict[str, str] = {}  # "<name>:<port>" (every DNS form) -> "127.0.0.1:<port>"
        self.listen: dict[int, str] = {}  # container port -> the loopback address its process binds
        outside = {"postgres": postgres, "objectstore": s3}
        for service in chart.of_kind("Service"):
            name, component = service["metadata"]["name"], service["metadata"]["labels"].get(COMPONENT_LABEL, "")
            for port in service["spec"]["ports"]:
                local = next((addr for key, addr in outside.items() if key in component), None)
                local = local or f"127.0.0.1:{servers.free_port()}"
                self._add(name, port["port"], local)
                target = port.get("targetPort", port["port"])
                for pod in network_policies.pods(chart):
                    if selects({"matchLabels": service["spec"]["selector"]}, pod.labels) and "Job/" not in pod.where:
                        self.listen[pod.ports[target] if isinstance(target, str) else target] = local
        ray = chart.raycluster()["metadata"]["name"] + "-head-svc"
        self._add(ray, 8265, ray_dashboard.removeprefix("http://"))

    def _add(self, name: str, port: int, local: str) -> None:
        for host in (name, f"{name}.{NAMESPACE}", f"{name}.{NAMESPACE}.svc", f"{name}.{NAMESPACE}.svc.cluster.local"):
            self.addresses[f"{host}:{port}"] = local

    def of(self, name: str, port: int) -> str:
        return self.addresses[f"{name}:{port}"]

    def rewrite(self, value: str) -> str:
        for host in sorted(self.addresses, key=len, reverse=True):
            value = re.sub(rf"(?<![\w.-]){re.escape(host)}(?!\d)", self.addresses[host], value)

        def listen(match: re.Match[str]) -> str:
            return self.listen.get(int(match.group(2)), match.group(0))

        return re.sub(r"^(0\.0\.0\.0|\[::\]|::):(\d+)$", listen, value)


COMPONENT_LABEL = "app.kubernetes.io/component"


def _supplied_secrets(chart: Rendered, postgres_url: str, s3: S3Settings, ray: RayCluster) -> dict[str, dict[str, str]]:
    """The existing Secrets the chart refers to, holding the test fixtures' credentials: the database URL names
    the chart's own PostgreSQL Service (the loopback map sends it to the test's server)."""
    postgres = [s for s in chart.of_kind("Service") if "postgres" in s["metadata"]["labels"].get(COMPONENT_LABEL, "")]
    host = f"{postgres[0]['metadata']['name']}:{postgres[0]['spec']['ports'][0]['port']}"
    database_url = re.sub(r"@[^/]+/", f"@{host}/", postgres_url)
    keys = chart.values["secrets"]["keys"]
    return {
        SECRET: {
            keys["databaseUrl"]: database_url,
            keys["s3AccessKey"]: s3.access_key,
            keys["s3SecretKey"]: s3.secret_key,
            keys["adminToken"]: new_admin_token(),
            keys["serviceToken"]: new_service_token(),
            keys["postgresPassword"]: "unused",
        },
        MASTER_KEY_SECRET: {chart.values["secrets"]["masterKey"]["key"]: base64.b64encode(os.urandom(32)).decode()},
        RAY_TOKEN_SECRET: {"auth_token": ray.token_file.read_text().strip()},
    }


def _process(pod: Doc, box: Doc, sources: Sources, loopback: Loopback, root: Path) -> tuple[list[str], dict[str, str]]:
    """The container's command line and environment, on this machine: its mounted Secrets written under
    ``root``, its emptyDirs made there, cluster names sent to loopback, `python` the tests' interpreter."""
    env = resolved_env(box, sources)
    places: dict[str, Path] = {}
    root.mkdir(parents=True, exist_ok=True)
    for i, (mount, files) in enumerate(secret_mounts(pod, box, sources).items()):
        places[mount] = root / f"secret-{i}"
        if "" in files:  # a subPath mount: one file at the mount path
            places[mount].write_text(files[""])
            continue
        places[mount].mkdir()
        for name, content in files.items():
            (places[mount] / name).write_text(content)
    for i, mount in enumerate(empty_dir_mounts(pod, box)):
        places[mount] = root / f"empty-{i}"
        places[mount].mkdir(parents=True, exist_ok=True)

    def local(value: str) -> str:
        for mount in sorted(places, key=len, reverse=True):
            if value == mount or value.startswith(mount.rstrip("/") + "/"):
                return str(places[mount]) + value[len(mount.rstrip("/")) :]
        return loopback.rewrite(value)

    env = {name: local(value) for name, value in env.items()}
    argv = [local(part) for part in [*box.get("command", []), *box.get("args", [])]]
    assert argv[:3] == ["python", "-m", argv[2]] and argv[2].startswith("services."), argv
    argv[0] = sys.executable
    base = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1"}
    home = env.get("HOME", "")
    if not home.startswith(str(root)):
        env["HOME"] = str(root / "home")
        Path(env["HOME"]).mkdir(exist_ok=True)
    return argv, {**base, **env}


def _tail(log: Path, lines: int = 25) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""


def _serving(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
        except grpc.RpcError:
            return False
    return answer.status == health_pb2.HealthCheckResponse.SERVING


@pytest.fixture
def started() -> Iterator[dict[str, tuple[subprocess.Popen[bytes], Path]]]:
    running: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
    yield running
    for proc, _ in running.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc, _ in running.values():
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def test_every_service_starts_from_the_rendered_chart(
    postgres_url: str,
    s3_settings: S3Settings,
    ray_cluster: RayCluster,
    tmp_path: Path,
    started: dict[str, tuple[subprocess.Popen[bytes], Path]],
) -> None:
    chart = render(VALUES)
    supplied = _supplied_secrets(chart, postgres_url, s3_settings, ray_cluster)
    sources = Sources(chart, supplied)
    loopback = Loopback(chart, postgres_url.split("@")[1].split("/")[0], s3_settings.endpoint, ray_cluster.dashboard)

    # The migration Job first, as the pre-install hook runs it.
    job = next(j for j in chart.of_kind("Job") if "helm.sh/hook" in (j["metadata"].get("annotations") or {}))
    pod = job["spec"]["template"]["spec"]
    argv, env = _process(pod, pod["containers"][0], sources, loopback, tmp_path / "migrations")
    migrated = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, timeout=60)
    assert migrated.returncode == 0, migrated.stderr.decode()[-3000:]

    for service in SERVICES:
        pod = chart.deployment(service)["spec"]["template"]["spec"]
        argv, env = _process(pod, container(pod, service), sources, loopback, tmp_path / service)
        assert argv[1:] == ["-m", f"services.{service}"]
        log = tmp_path / f"{service}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        started[service] = (proc, log)

    grpc_address = {service: _address(chart, loopback, service, "grpc") for service in SERVICES}
    deadline = time.monotonic() + STARTUP_S
    waiting = set(SERVICES)
    while waiting and time.monotonic() < deadline:
        for service in sorted(waiting):
            proc, log = started[service]
            assert proc.poll() is None, f"{service} exited with {proc.returncode}:\n{_tail(log)}"
            if _serving(grpc_address[service]):
                waiting.discard(service)
        time.sleep(0.3)
    assert not waiting, "not SERVING in time: " + "; ".join(f"{s}:\n{_tail(started[s][1])}" for s in waiting)

    admin = [("authorization", f"Bearer {supplied[SECRET][chart.values['secrets']['keys']['adminToken']]}")]
    with grpc.insecure_channel(grpc_address["registry"]) as channel:
        registry = registry_pb2_grpc.RegistryServiceStub(channel)
        tenant = registry.CreateTenant(
            registry_pb2.CreateTenantRequest(name=f"smoke-{secrets.token_hex(4)}"), metadata=admin, timeout=10
        )
        key = registry.CreateApiKey(
            registry_pb2.CreateApiKeyRequest(tenant_id=tenant.id, name="smoke"), metadata=admin, timeout=10
        ).secret
        user = [("authorization", f"Bearer {key}")]
        assert registry.WhoAmI(registry_pb2.WhoAmIRequest(), metadata=user, timeout=10).id == tenant.id
    with grpc.insecure_channel(grpc_address["ingest"]) as channel:
        datasets = ingest_pb2_grpc.IngestServiceStub(channel).ListDatasets(
            ingest_pb2.ListDatasetsRequest(), metadata=user, timeout=10
        )
        assert list(datasets.datasets) == []
    with grpc.insecure_channel(grpc_address["teacher"]) as channel:
        keys = teacher_pb2_grpc.TeacherServiceStub(channel).ListProviderKeys(
            teacher_pb2.ListProviderKeysRequest(), metadata=user, timeout=10
        )
        assert list(keys.keys) == []
    with grpc.insecure_channel(grpc_address["trainer"]) as channel:
        runs = trainer_pb2_grpc.TrainerServiceStub(channel).ListRuns(
            trainer_pb2.ListRunsRequest(), metadata=user, timeout=10
        )
        assert list(runs.runs) == []

    http = _address(chart, loopback, "gateway", "http")
    with urllib.request.urlopen(f"http://{http}/health", timeout=10) as answer:
        assert answer.status == 200
    request = urllib.request.Request(f"http://{http}/v1/models", headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert json.load(answer)["data"] == []


def _address(chart: Rendered, loopback: Loopback, component: str, port_name: str) -> str:
    """Where the component's Service sends its port called ``port_name``, on this machine."""
    for service in chart.of_kind("Service"):
        if service["metadata"]["labels"].get(COMPONENT_LABEL) == component:
            for port in service["spec"]["ports"]:
                if port["name"] == port_name:
                    return loopback.of(service["metadata"]["name"], port["port"])
    raise AssertionError(f"no Service of {component} has a port named {port_name}")
