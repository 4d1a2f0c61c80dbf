"""What the Helm chart must hold, as checks over a render that return the problems they find (an empty list when
the chart is right), so tests/test_helm_chart.py can assert them on every value set and show each one failing on a
chart that lost what it looks for.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import network_policies
import settings_env
from helm_chart import COMPONENT, NAMESPACE, SERVICES, Doc, Rendered, Sources, container, env_names, resolved_env
from network_policies import Pod, selects


def probe_problems(chart: Rendered) -> list[str]:
    """Every container of every service Deployment: native gRPC readiness and liveness probes on a port it opens."""
    problems = []
    for deployment in chart.of_kind("Deployment"):
        for box in deployment["spec"]["template"]["spec"]["containers"]:
            where = f"Deployment/{deployment['metadata']['name']} container {box['name']}"
            ports = {p["containerPort"] for p in box.get("ports") or []}
            for probe in ("readinessProbe", "livenessProbe"):
                grpc = (box.get(probe) or {}).get("grpc")
                if not grpc:
                    problems.append(f"{where}: no {probe}.grpc")
                elif grpc["port"] not in ports:
                    problems.append(f"{where}: {probe}.grpc.port {grpc['port']} is not among its ports {ports}")
    return problems


def security_problems(chart: Rendered) -> list[str]:
    """Pod Security "restricted", and a read-only root filesystem, for every pod the chart renders."""
    problems = []
    for where, pod in chart.pod_specs():
        pod_context = pod.get("securityContext") or {}
        if (pod_context.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
            problems.append(f"{where}: pod seccompProfile is not RuntimeDefault")
        for box in [*pod.get("initContainers", []), *pod["containers"]]:
            context = box.get("securityContext") or {}
            name = f"{where} container {box['name']}"
            if not context.get("runAsNonRoot", pod_context.get("runAsNonRoot")):
                problems.append(f"{name}: runAsNonRoot is not true")
            if context.get("runAsUser", pod_context.get("runAsUser")) == 0:
                problems.append(f"{name}: runs as uid 0")
            if context.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{name}: readOnlyRootFilesystem is not true")
            if context.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{name}: allowPrivilegeEscalation is not false")
            if "ALL" not in ((context.get("capabilities") or {}).get("drop") or []):
                problems.append(f"{name}: capabilities do not drop ALL")
            if context.get("privileged"):
                problems.append(f"{name}: privileged")
    return problems


# Variables a service reads (tests/settings_env.py records them from its Settings.from_env()) that the chart
# leaves to the code's default ON PURPOSE. Anything else a service reads must be set on its Deployment.
LEFT_TO_DEFAULTS = {
    # The teacher's master key comes as a mounted file (DISTILLERY_MASTER_KEY_FILE), never as an env value.
    "DISTILLERY_MASTER_KEY",
    # Provider API keys come from secrets.providerKeys.existingSecret, only when an operator gives one;
    # without it tenants bring their own keys (the code's default "").
    "DISTILLERY_OPENAI_API_KEY",
    "DISTILLERY_ANTHROPIC_API_KEY",
    "DISTILLERY_GOOGLE_API_KEY",
    "DISTILLERY_PLATFORM_API_KEY",
    "DISTILLERY_VLLM_API_KEY",
}


def env_problems(chart: Rendered, service: str) -> list[str]:
    """Every variable the service's settings read is set on its Deployment's container, unless LEFT_TO_DEFAULTS;
    every variable they require is set, whatever that list says."""
    deployment = chart.deployment(service)
    pod = deployment["spec"]["template"]["spec"]
    given = env_names(container(pod, service), chart)
    reads = settings_env.reads(service)
    missing_required = sorted(reads.required - given)
    missing = sorted(reads.read - given - LEFT_TO_DEFAULTS - reads.required)
    problems = [f"{service}: required {name} is not set by the chart" for name in missing_required]
    problems += [f"{service}: {name} is read but not set (set it, or add it to LEFT_TO_DEFAULTS)" for name in missing]
    return problems


# Addresses a service is given but never connects to: it hands them to users.
NOT_CALLED = {
    "DISTILLERY_GATEWAY_URL",  # the registry writes it into deployments and snippets
    "DISTILLERY_S3_PUBLIC_ENDPOINT",  # ingest signs upload URLs for it
}


def _wiring(chart: Rendered) -> list[tuple[Pod, Pod, int, str]]:
    """Who connects to whom, from the chart's own wiring: each address a pod is given (env values it can
    resolve, command line) that names a rendered Service or the Ray head's Service; what the trainer hands its
    Ray jobs (its push address and the object store); Ray nodes to one another on any port."""
    everyone = list(network_policies.pods(chart))
    ray_pods = [p for p in everyone if p.where.startswith("RayCluster/")]
    head = [p for p in ray_pods if p.labels["ray.io/node-type"] == "head"]
    targets: dict[str, list[tuple[Pod, int]]] = {}  # "<host>:<port>" -> backends and their port
    for service in chart.of_kind("Service"):
        selected = [
            p
            for p in everyone
            if p.where.split("/")[0] != "Job" and selects({"matchLabels": service["spec"]["selector"]}, p.labels)
        ]
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            for name in (service["metadata"]["name"], f"{service['metadata']['name']}.{NAMESPACE}.svc.cluster.local"):
                targets[f"{name}:{port['port']}"] = [
                    (b, b.ports[target] if isinstance(target, str) else target) for b in selected
                ]
    head_service = f"{chart.raycluster()['metadata']['name']}-head-svc"
    for port in (6379, 8265, 10001):
        targets[f"{head_service}:{port}"] = [(h, port) for h in head]
    sources = Sources(chart, UnknownSecrets())
    edges = []
    trainer_env: dict[str, str] = {}
    for where, pod in chart.pod_specs():
        me = next((p for p in everyone if p.where == where), None)
        if me is None:
            continue
        for box in pod["containers"]:
            env = resolved_env(box, sources)
            if me.labels.get(COMPONENT) == "trainer":
                trainer_env = env
            said = " ".join(
                [*(v for k, v in env.items() if k not in NOT_CALLED), *box.get("command", []), *box.get("args", [])]
            )
            for address, reached in targets.items():
                if re.search(rf"(?<![\w.-]){re.escape(address)}(?!\d)", said):
                    edges += [(me, b, port, f"{where} is given {address}") for b, port in reached]
    for given in ("DISTILLERY_TRAINER_PUSH_ADDRESS", "DISTILLERY_S3_ENDPOINT"):
        for b, port in targets.get(trainer_env.get(given, ""), []):
            edges += [(r, b, port, f"Ray jobs are given the trainer's {given}") for r in ray_pods]
    edges += [(a, b, 10002, "Ray nodes talk to one another") for a in ray_pods for b in ray_pods if a != b]
    edges += [(w, h, 6379, "Ray workers join the head's GCS") for w in ray_pods for h in head if w != h]
    # Users, from another namespace: the CLI and SDK call each gRPC service, apps the gateway, uploads go to S3.
    client = Pod("a client in another namespace", {}, {}, frozenset(), namespace="clients")
    for service in chart.of_kind("Service"):
        if service["metadata"]["labels"].get(COMPONENT) in (*SERVICES, "objectstore"):
            edges += [(client, b, port, "users reach the APIs") for b, port in targets[_first_address(service)]]
    return edges


def _first_address(service: Doc) -> str:
    return f"{service['metadata']['name']}:{service['spec']['ports'][-1]['port']}"


class UnknownSecrets(dict[str, dict[str, str]]):
    """An operator's existing Secret: its values are not known to the render ("secret:<name>/<key>")."""

    def __missing__(self, name: str) -> dict[str, str]:
        return UnknownSecretKeys(name)

    def __contains__(self, name: object) -> bool:
        return True


class UnknownSecretKeys(dict[str, str]):
    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def __missing__(self, key: str) -> str:
        return f"secret:{self.name}/{key}"

    def __contains__(self, key: object) -> bool:
        return True


def connection_problems(chart: Rendered) -> list[str]:
    """Each connection the wiring implies is let through by the NetworkPolicies."""
    edges = _wiring(chart)
    assert edges, "no connection found in the chart's wiring"
    return sorted(
        {
            f"{source.where} -> {destination.where}:{port} is blocked ({why})"
            for source, destination, port, why in edges
            if not network_policies.may_connect(chart, source, destination, port)
        }
    )


# Variables that hold a secret: a password, token or key, or the database URL (it has the password in it).
SECRET_VARIABLE = re.compile(r"(PASSWORD|SECRET|TOKEN|_KEY|DATABASE_URL)$")


def secret_leaks(chart: Rendered) -> list[str]:
    """Secret-looking variables written as plain values (env value:, ConfigMap data) instead of Secret refs."""
    leaks = []
    for cm in chart.of_kind("ConfigMap"):
        leaks += [f"ConfigMap/{cm['metadata']['name']}: {k}" for k in cm.get("data") or {} if SECRET_VARIABLE.search(k)]
    for where, pod in chart.pod_specs():
        for box in [*pod.get("initContainers", []), *pod["containers"]]:
            for item in box.get("env") or []:
                plain = "value" in item and item["value"] and SECRET_VARIABLE.search(item["name"])
                if plain:
                    leaks.append(f"{where} {box['name']}: {item['name']}")
    return leaks


def secret_values(values: Any, path: str = "") -> list[str]:
    """Non-empty values under secret-looking keys of a values tree (names of Secrets and keys are fine)."""
    found = []
    if isinstance(values, Mapping):
        for key, value in values.items():
            where = f"{path}.{key}" if path else key
            secretish = isinstance(value, str) and value and re.search(r"password|secret|token|apikey", key, re.I)
            if secretish and not re.search(r"existingSecret|Name$|key$|keys", where):
                found.append(where)
            found += secret_values(value, where)
    return found
