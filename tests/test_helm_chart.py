"""The Helm chart (deploy/helm/distillery), rendered offline by Helm's Go SDK for several value sets: lint-clean,
every document valid for Kubernetes (strict) and the RayCluster for KubeRay's CRD, values.schema.json strict, and
what the chart must hold in the spirit of helm-unittest (probes, restricted pods, no plaintext secret, Ray token
auth, GPU groups, default-deny network, the migration hook, and every variable each service reads).

Each check is a function returning the problems it finds, so the last tests can show that it fails on a copy of
the chart with a probe or a required variable taken out.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import helm_python
import network_policies
import pytest
import settings_env
from chart_checks import (
    LEFT_TO_DEFAULTS,
    UnknownSecrets,
    connection_problems,
    env_problems,
    probe_problems,
    secret_leaks,
    secret_values,
    security_problems,
)
from helm_chart import (
    CHART_DIR,
    COMPONENT,
    ROOT,
    SERVICES,
    Rendered,
    Sources,
    container,
    kubernetes_errors,
    lint_findings,
    raycluster_errors,
    render,
    resolved_env,
    secret_mounts,
    values_file,
)
from network_policies import selects

# Everything the chart needs from outside in production: existing Secrets and the external object store.
EXTERNAL = {
    "secrets": {
        "generate": False,
        "existingSecret": "distillery-secrets",
        "masterKey": {"existingSecret": "distillery-master-key"},
    },
    "objectStore": {"endpoint": "s3.eu-west-1.amazonaws.com:443", "secure": True},
    "ray": {"auth": {"existingSecret": "distillery-ray-token"}},
}
DEV_DEPENDENCIES_OFF = {"postgresql": {"enabled": False}, "devObjectStore": {"enabled": False}}


VALUE_SETS = ("defaults", "production", "gpu", "dev-dependencies-off")


def layers(value_set: str) -> tuple[Mapping[str, Any], ...]:
    """The values of one value set, in `helm -f ... -f ...` order."""
    if value_set == "production":
        return (values_file("values-production.yaml"),)
    if value_set == "gpu":
        return (values_file("values-gpu.yaml"),)
    if value_set == "dev-dependencies-off":
        return (EXTERNAL, DEV_DEPENDENCIES_OFF)
    assert value_set == "defaults"
    return ()


@cache
def rendered(value_set: str) -> Rendered:
    return render(*layers(value_set))


# --- the value sets ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_lint_is_clean(value_set: str) -> None:
    assert lint_findings(*layers(value_set)) == []


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_document_is_valid_for_kubernetes(value_set: str) -> None:
    chart = rendered(value_set)
    kinds = {doc["kind"] for doc in chart.documents}
    assert {"Deployment", "Service", "ConfigMap", "NetworkPolicy", "Job", "PodDisruptionBudget"} <= kinds
    errors = {
        f"{doc['kind']}/{doc['metadata']['name']}": kubernetes_errors(doc)
        for doc in chart.documents
        if doc["kind"] != "RayCluster"
    }
    assert {where: error for where, error in errors.items() if error} == {}


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_the_raycluster_is_valid_for_kuberay(value_set: str) -> None:
    assert raycluster_errors(rendered(value_set).raycluster()) == []


def test_the_kuberay_schema_refuses_what_kuberay_would() -> None:
    cluster = rendered("defaults").raycluster()
    wrong = {**cluster, "spec": {**cluster["spec"], "headGroupSpec": {**cluster["spec"]["headGroupSpec"]}}}
    wrong["spec"]["headGroupSpec"]["rayStartParam"] = {"num-cpus": "0"}  # a misspelt field
    wrong["spec"]["authOptions"] = {"mode": "tokens"}
    errors = "\n".join(raycluster_errors(wrong))
    assert "rayStartParam" in errors and "'tokens' is not one of" in errors


def test_the_values_schema_refuses_a_wrong_type_and_an_unknown_key() -> None:
    with pytest.raises(helm_python.HelmValuesError, match="replicas"):
        render({"registry": {"replicas": "two"}})
    with pytest.raises(helm_python.HelmValuesError, match="replica"):
        render({"registry": {"replica": 2}})
    with pytest.raises(helm_python.HelmValuesError, match="postgres"):
        render({"postgres": {"enabled": False}})
    with pytest.raises(helm_python.HelmValuesError, match="logLevel"):
        render({"settings": {"logLevel": 3}})


# --- what the chart holds ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_service_has_grpc_probes(value_set: str) -> None:
    chart = rendered(value_set)
    assert {d["metadata"]["labels"][COMPONENT] for d in chart.of_kind("Deployment")} >= set(SERVICES)
    assert probe_problems(chart) == []


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_pod_is_restricted(value_set: str) -> None:
    assert security_problems(rendered(value_set)) == []


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_no_plaintext_secret(value_set: str) -> None:
    chart = rendered(value_set)
    assert secret_leaks(chart) == []
    assert secret_values(chart.values) == []


def test_generated_dev_secrets_are_random_and_production_renders_none() -> None:
    first, second = render(), render()
    generated = {s["metadata"]["name"] for s in first.of_kind("Secret")}
    for name in generated:
        assert first.secret(name) != second.secret(name), f"Secret {name} is the same in two installs"
    for value_set in ("production", "dev-dependencies-off"):
        assert [s["metadata"]["name"] for s in rendered(value_set).of_kind("Secret")] == []


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_the_raycluster_has_token_auth_and_autoscaling(value_set: str) -> None:
    spec = rendered(value_set).raycluster()["spec"]
    assert spec["authOptions"]["mode"] == "token"
    assert spec["enableInTreeAutoscaling"] is True
    cpu = [g for g in spec["workerGroupSpecs"] if g["groupName"] == "cpu"]
    assert cpu and cpu[0]["minReplicas"] == 0


@pytest.mark.parametrize("value_set", ["defaults", "production"])
def test_the_trainer_and_every_ray_process_share_the_clusters_token(value_set: str) -> None:
    """The Secret KubeRay's token auth uses is the one the trainer reads its token file from, and the one each Ray
    container (head, workers, autoscaler) takes RAY_AUTH_TOKEN from."""
    chart = rendered(value_set)
    spec = chart.raycluster()["spec"]
    name = spec["authOptions"]["secretName"]
    existing = UnknownSecrets()  # the operator's Secrets, when not rendered: this one with a known token
    existing[name] = {"auth_token": "the-token"}
    sources = Sources(chart, existing)
    token = sources.secret(name)["auth_token"]
    pod = chart.deployment("trainer")["spec"]["template"]["spec"]
    trainer = container(pod, "trainer")
    path = resolved_env(trainer, sources)["DISTILLERY_RAY_TOKEN_FILE"]
    mounted = {
        f"{mount.rstrip('/')}/{file}": content
        for mount, files in secret_mounts(pod, trainer, sources).items()
        for file, content in files.items()
    }
    assert mounted.get(path) == token
    ray_containers = [
        box for where, p in chart.pod_specs() if where.startswith("RayCluster/") for box in p["containers"]
    ]
    for box in [*ray_containers, {"name": "autoscaler", **spec["autoscalerOptions"]}]:
        env = resolved_env(box, sources)
        assert (env.get("RAY_AUTH_MODE"), env.get("RAY_AUTH_TOKEN")) == ("token", token), box["name"]


def test_gpu_groups_request_gpus_where_values_say_and_scale_from_zero() -> None:
    chart = rendered("gpu")
    wanted = chart.values["ray"]["gpuWorkerGroups"]
    assert wanted, "values-gpu.yaml has no GPU worker group"
    groups = {g["groupName"]: g for g in chart.raycluster()["spec"]["workerGroupSpecs"]}
    for want in wanted:
        group = groups[want["name"]]
        pod = group["template"]["spec"]
        ray = pod["containers"][0]
        assert str(ray["resources"]["limits"]["nvidia.com/gpu"]) == str(want["gpusPerWorker"])
        assert pod.get("nodeSelector", {}) == want.get("nodeSelector", {})
        assert pod.get("tolerations", []) == want.get("tolerations", [])
        assert group["minReplicas"] == 0 and group["maxReplicas"] == want["maxReplicas"]
        assert ray["image"].endswith(chart.values["image"]["rayWorker"]["cudaTagSuffix"])
    cpu_only = rendered("defaults").raycluster()["spec"]["workerGroupSpecs"]
    assert not any("nvidia.com/gpu" in str(g) for g in cpu_only)


@pytest.mark.parametrize("value_set", ["defaults", "gpu"])
def test_the_trainer_is_told_the_worker_groups_of_the_raycluster(value_set: str) -> None:
    """DISTILLERY_WORKER_GROUPS (services/trainer/worker_groups.py) says what each RayCluster group gives a job."""
    chart = rendered(value_set)
    pod = chart.deployment("trainer")["spec"]["template"]["spec"]
    told = json.loads(resolved_env(container(pod, "trainer"), Sources(chart))["DISTILLERY_WORKER_GROUPS"])
    groups = {g["groupName"]: g for g in chart.raycluster()["spec"]["workerGroupSpecs"]}
    assert sorted(g["name"] for g in told) == sorted(groups)
    for group in told:
        spec = groups[group["name"]]
        limits = spec["template"]["spec"]["containers"][0]["resources"].get("limits", {})
        assert group["max_workers"] == spec["maxReplicas"]
        assert group.get("gpus_per_worker", 0) == int(limits.get("nvidia.com/gpu", 0))


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_a_default_deny_network_policy_covers_every_pod(value_set: str) -> None:
    policies = rendered(value_set).of_kind("NetworkPolicy")
    deny = [
        p
        for p in policies
        if not p["spec"]["podSelector"].get("matchExpressions")
        and set(p["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
    ]
    assert deny, "no NetworkPolicy denies all ingress and egress"
    assert len(policies) > 1, "nothing is allowed: the services could not reach each other"


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_the_network_policies_let_through_what_the_wiring_needs(value_set: str) -> None:
    assert connection_problems(rendered(value_set)) == []


def test_every_service_selects_its_pods_on_a_port_they_open() -> None:
    chart = rendered("defaults")
    everyone = list(network_policies.pods(chart))
    for service in chart.of_kind("Service"):
        backends = [
            p
            for p in everyone
            if selects({"matchLabels": service["spec"]["selector"]}, p.labels) and "Job/" not in p.where
        ]
        assert backends, f"Service {service['metadata']['name']} selects no pod"
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            for pod in backends:
                assert (target in pod.ports) if isinstance(target, str) else (target in pod.numbers), (
                    f"Service {service['metadata']['name']} port {port} is not open on {pod.where}"
                )


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_migrations_run_as_a_hook_before_the_services_change(value_set: str) -> None:
    """Before every upgrade; before an install too, except with the dev PostgreSQL, which the install itself makes
    (then right after it: the services also migrate at start)."""
    chart = rendered(value_set)
    hooks = [j for j in chart.of_kind("Job") if "helm.sh/hook" in (j["metadata"].get("annotations") or {})]
    assert len(hooks) == 1
    events = set(hooks[0]["metadata"]["annotations"]["helm.sh/hook"].split(","))
    first = "post-install" if chart.values["postgresql"]["enabled"] else "pre-install"
    assert events == {first, "pre-upgrade"}
    if value_set in ("production", "dev-dependencies-off"):
        assert first == "pre-install"
    box = hooks[0]["spec"]["template"]["spec"]["containers"][0]
    assert [*box.get("command", []), *box.get("args", [])] == ["python", "-m", "services.migrate"]


@pytest.mark.parametrize("value_set", ["defaults", "production", "dev-dependencies-off"])
@pytest.mark.parametrize("service", SERVICES)
def test_every_variable_a_service_reads_is_set(service: str, value_set: str) -> None:
    assert env_problems(rendered(value_set), service) == []


@pytest.mark.parametrize("service", SERVICES)
def test_the_recording_sees_every_variable_named_in_the_settings(service: str) -> None:
    """A cross-check of tests/settings_env.py: each DISTILLERY_* name written in the service's settings module
    (and services/common/settings.py for the parts it uses) is among what from_env() was seen to read."""
    named = set(
        re.findall(r"[\"'](DISTILLERY_[A-Z0-9_]+)[\"']", (ROOT / f"services/{service}/settings.py").read_text())
    )
    assert named and named <= settings_env.reads(service).read
    assert LEFT_TO_DEFAULTS - set().union(*(settings_env.reads(s).read for s in SERVICES)) == set()


def test_notes_say_how_to_reach_the_api() -> None:
    notes = rendered("defaults").notes
    assert "port-forward" in notes and "gateway" in notes


# --- the checks fail when the chart loses what they look for -----------------------------------------------------


def _chart_copy_without(tmp_path: Path, drop: Callable[[list[str]], list[str]]) -> Path:
    """A copy of the chart whose templates went through ``drop`` (lines in, lines out); at least one changed."""
    copy = tmp_path / "distillery"
    shutil.copytree(CHART_DIR, copy)
    changed = 0
    for template in sorted((copy / "templates").rglob("*")):
        if template.suffix in (".yaml", ".tpl"):
            lines = template.read_text().splitlines(keepends=True)
            kept = drop(lines)
            if kept != lines:
                template.write_text("".join(kept))
                changed += 1
    assert changed, "the mutation found nothing to take out of the chart"
    return copy


def _without_block(key: str) -> Callable[[list[str]], list[str]]:
    """Drop every ``key:`` line with the lines indented under it."""

    def drop(lines: list[str]) -> list[str]:
        out, skip_deeper_than = [], -1
        for line in lines:
            indent = len(line) - len(line.lstrip())
            if skip_deeper_than >= 0 and (indent > skip_deeper_than or not line.strip()):
                continue
            skip_deeper_than = indent if line.strip().startswith(f"{key}:") else -1
            if skip_deeper_than < 0:
                out.append(line)
        return out

    return drop


def test_the_probe_check_fails_on_a_chart_without_a_readiness_probe(tmp_path: Path) -> None:
    chart = render(chart_dir=_chart_copy_without(tmp_path, _without_block("readinessProbe")))
    problems = probe_problems(chart)
    assert any("no readinessProbe.grpc" in p for p in problems)
    print("\n".join(problems))


def test_the_env_check_fails_on_a_chart_without_a_required_variable(tmp_path: Path) -> None:
    """DISTILLERY_REGISTRY_ADDRESS (every service but the registry requires it) taken out of the chart."""

    def drop(lines: list[str]) -> list[str]:
        return [line for line in lines if "DISTILLERY_REGISTRY_ADDRESS" not in line]

    chart = render(chart_dir=_chart_copy_without(tmp_path, drop))
    problems = [p for service in SERVICES for p in env_problems(chart, service)]
    assert "ingest: required DISTILLERY_REGISTRY_ADDRESS is not set by the chart" in problems
    print("\n".join(problems))


def test_the_network_check_fails_when_a_policy_lets_less_through() -> None:
    chart = rendered("defaults")
    narrowed = copy.deepcopy(chart)
    for policy in narrowed.of_kind("NetworkPolicy"):
        if selects(
            policy["spec"]["podSelector"], narrowed.deployment("registry")["spec"]["template"]["metadata"]["labels"]
        ):
            policy["spec"]["ingress"] = []
    problems = connection_problems(narrowed)
    assert any("Deployment/dst-distillery-ingest -> Deployment/dst-distillery-registry:50051" in p for p in problems)
