"""The Helm chart as the tests see it: rendered offline with Helm's own Go SDK (helm-python-sdk, no helm binary),
parsed into documents, checked against Kubernetes' schemas (kubernetes-validate, strict) and KubeRay's CRD, and
each service container's environment resolved the way the kubelet would (ConfigMaps and Secrets of the render,
or Secrets the test supplies where the chart names an existing one).

tests/test_helm_chart.py asserts what the chart must contain; tests/test_helm_smoke.py starts the services from it.
"""

from __future__ import annotations

import base64
import copy
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import helm_python
import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parent.parent
# The chart under test; DISTILLERY_HELM_CHART_DIR points the same checks at another copy (a modified one, to see
# `make helm-check` fail).
CHART_DIR = Path(os.environ.get("DISTILLERY_HELM_CHART_DIR") or ROOT / "deploy" / "helm" / "distillery")
# The release and namespace every test renders with: a release name without "distillery" in it, so the chart's
# fullname rule (`<release>-distillery`) is exercised.
RELEASE = "dst"
NAMESPACE = "platform"
# The Kubernetes version the rendered documents must be valid for (kubernetes-validate ships its schemas).
KUBE_VERSION = "1.33.0"
# KubeRay's RayCluster schema (ray.io/v1), as released: see tests/schemas/README.md.
RAYCLUSTER_SCHEMA = ROOT / "tests" / "schemas" / "kuberay-v1.7.0-raycluster-v1.json"
# The services the chart runs, each a Deployment labelled app.kubernetes.io/component=<name>.
SERVICES = ("registry", "ingest", "teacher", "trainer", "gateway")
COMPONENT = "app.kubernetes.io/component"

Doc = dict[str, Any]


# --- rendering ---------------------------------------------------------------------------------------------------


def values_file(name: str, chart_dir: Path = CHART_DIR) -> dict[str, Any]:
    """One of the chart's values files (values-production.yaml, values-gpu.yaml), parsed."""
    loaded = yaml.safe_load((chart_dir / name).read_text())
    return dict(loaded or {})


def merged(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """Values layered as `helm -f a.yaml -f b.yaml --set ...` layers them: maps merge, anything else is replaced."""
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, Mapping) and isinstance(out.get(key), dict):
                out[key] = merged(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
    return out


@dataclass
class Rendered:
    """One `helm template`: its documents (hooks included, as install applies them) and NOTES.txt."""

    documents: list[Doc]
    notes: str
    values: dict[str, Any]

    def of_kind(self, kind: str) -> list[Doc]:
        return [doc for doc in self.documents if doc["kind"] == kind]

    def named(self, kind: str, name: str) -> Doc:
        found = [doc for doc in self.of_kind(kind) if doc["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} named {name}, found {len(found)}"
        return found[0]

    def deployment(self, service: str) -> Doc:
        """The Deployment of one service: the one labelled app.kubernetes.io/component=<service>."""
        found = [d for d in self.of_kind("Deployment") if d["metadata"].get("labels", {}).get(COMPONENT) == service]
        names = [d["metadata"]["name"] for d in self.of_kind("Deployment")]
        assert len(found) == 1, f"expected one Deployment labelled {COMPONENT}={service}, found {len(found)} ({names})"
        return found[0]

    def raycluster(self) -> Doc:
        found = self.of_kind("RayCluster")
        assert len(found) == 1, f"expected one RayCluster, found {len(found)}"
        return found[0]

    def pod_specs(self) -> Iterator[tuple[str, Doc]]:
        """Every pod spec the chart renders, named "<Kind>/<name>[/<group>]": workloads, Jobs, Ray groups."""
        for doc in self.documents:
            where = f"{doc['kind']}/{doc['metadata']['name']}"
            spec = doc.get("spec") or {}
            if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"):
                yield where, spec["template"]["spec"]
            elif doc["kind"] == "CronJob":
                yield where, spec["jobTemplate"]["spec"]["template"]["spec"]
            elif doc["kind"] == "Pod":
                yield where, spec
            elif doc["kind"] == "RayCluster":
                yield f"{where}/headgroup", spec["headGroupSpec"]["template"]["spec"]
                for group in spec.get("workerGroupSpecs") or []:
                    yield f"{where}/{group['groupName']}", group["template"]["spec"]

    def secret(self, name: str) -> dict[str, str] | None:
        """The decoded data of a rendered Secret, or None when the chart does not render it."""
        found = [doc for doc in self.of_kind("Secret") if doc["metadata"]["name"] == name]
        return secret_data(found[0]) if found else None

    def config_map(self, name: str) -> dict[str, str] | None:
        found = [doc for doc in self.of_kind("ConfigMap") if doc["metadata"]["name"] == name]
        return dict(found[0].get("data") or {}) if found else None


def render(*layers: Mapping[str, Any], chart_dir: Path = CHART_DIR, release: str = RELEASE) -> Rendered:
    """Render the chart with values layered over its defaults (values files first, then overrides), as
    `helm template` does, after the same values.schema.json check (HelmValuesError when it refuses them)."""
    values = merged(*layers)
    with helm_python.Chart.load(chart_dir) as chart:
        manifests = chart.render(values, name=release, namespace=NAMESPACE, is_install=True)
        effective = chart.merge_values(values)
    documents: list[Doc] = []
    notes = ""
    for path in sorted(manifests):
        if path.endswith("NOTES.txt"):
            notes = manifests[path]
            continue
        documents.extend(doc for doc in yaml.safe_load_all(manifests[path]) if doc)
    return Rendered(documents, notes, effective)


def lint_findings(*layers: Mapping[str, Any], chart_dir: Path = CHART_DIR) -> list[str]:
    """`helm lint --strict` for Kubernetes KUBE_VERSION: every warning or error, as "path: message"."""
    report = helm_python.lint(
        chart_dir, merged(*layers), strict=True, namespace=NAMESPACE, kube_version=f"v{KUBE_VERSION}"
    )
    return [f"{m['path']}: {m['error']}" for m in report["messages"] if m["severity"] >= 2] + [
        e for e in report["errors"] if not any(e in m["error"] for m in report["messages"])
    ]


# --- schemas -----------------------------------------------------------------------------------------------------


def kubernetes_errors(doc: Doc) -> str | None:
    """Why Kubernetes KUBE_VERSION would refuse this document (strict: unknown fields too), or None."""
    try:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    except kubernetes_validate.ValidationError as err:
        return f"{err.message} at {'/'.join(str(p) for p in err.absolute_path)}"
    except kubernetes_validate.SchemaNotFoundError as err:
        return err.message
    return None


def strict_openapi(node: Any) -> Any:
    """A CRD's structural OpenAPI schema as a JSON schema that refuses what the API server would drop or refuse:
    unknown fields where the CRD does not preserve them, int-or-string, nullable."""
    if isinstance(node, list):
        return [strict_openapi(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: strict_openapi(value) for key, value in node.items() if key != "x-kubernetes-validations"}
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
        out.setdefault("additionalProperties", False)
    return out


@cache
def raycluster_validator() -> jsonschema.Draft202012Validator:
    schema = strict_openapi(json.loads(RAYCLUSTER_SCHEMA.read_text()))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def raycluster_errors(doc: Doc) -> list[str]:
    """Why KubeRay's CRD (RAYCLUSTER_SCHEMA) would refuse this RayCluster; [] when it takes it."""
    errors = raycluster_validator().iter_errors(doc)
    return [f"{'/'.join(str(p) for p in e.absolute_path)}: {e.message}" for e in errors]


# --- a container's environment, resolved -------------------------------------------------------------------------


def secret_data(doc: Doc) -> dict[str, str]:
    data = {key: base64.b64decode(value).decode() for key, value in (doc.get("data") or {}).items()}
    return {**data, **(doc.get("stringData") or {})}


@dataclass
class Sources:
    """Where env values come from: the render, plus Secrets the test supplies for those the chart only names."""

    rendered: Rendered
    existing_secrets: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    def secret(self, name: str) -> Mapping[str, str]:
        data = self.rendered.secret(name)
        if data is None:
            assert name in self.existing_secrets, f"Secret {name} is neither rendered nor supplied by the test"
            return self.existing_secrets[name]
        return data

    def config_map(self, name: str) -> dict[str, str]:
        data = self.rendered.config_map(name)
        assert data is not None, f"ConfigMap {name} is referenced but not rendered"
        return data


def container(pod_spec: Doc, name: str) -> Doc:
    """The container called ``name`` (or the pod's only container)."""
    containers = pod_spec["containers"]
    found = [c for c in containers if c["name"] == name] or (containers if len(containers) == 1 else [])
    assert found, f"no container {name} among {[c['name'] for c in containers]}"
    return dict(found[0])


def env_names(box: Doc, rendered: Rendered) -> set[str]:
    """The names of the variables a container gets. A reference to a rendered ConfigMap or Secret counts only
    when the key is there; one to a Secret the chart does not render (an operator's existing Secret) counts."""

    def data(ref: Doc, secret: bool) -> Mapping[str, str] | None:
        found = rendered.secret(ref["name"]) if secret else rendered.config_map(ref["name"])
        assert found is not None or secret, f"ConfigMap {ref['name']} is referenced but not rendered"
        return found

    names: set[str] = set()
    for source in box.get("envFrom") or []:
        ref = source.get("configMapRef") or source["secretRef"]
        names |= {source.get("prefix", "") + key for key in data(ref, "secretRef" in source) or {}}
    for item in box.get("env") or []:
        ref = item.get("valueFrom") or {}
        key_ref = ref.get("configMapKeyRef") or ref.get("secretKeyRef")
        if key_ref is None:
            names.add(item["name"])
            continue
        found = data(key_ref, "secretKeyRef" in ref)
        if found is None or key_ref["key"] in found:
            names.add(item["name"])
    return names


def resolved_env(box: Doc, sources: Sources) -> dict[str, str]:
    """A container's environment as the kubelet builds it: envFrom first, then env (later wins), $(VAR) expanded."""
    env: dict[str, str] = {}
    for source in box.get("envFrom") or []:
        prefix = source.get("prefix", "")
        if "configMapRef" in source:
            env.update({prefix + k: v for k, v in sources.config_map(source["configMapRef"]["name"]).items()})
        if "secretRef" in source:
            env.update({prefix + k: v for k, v in sources.secret(source["secretRef"]["name"]).items()})
    for item in box.get("env") or []:
        if "valueFrom" not in item:
            env[item["name"]] = expand(str(item.get("value", "")), env)
            continue
        ref = item["valueFrom"]
        if "secretKeyRef" in ref or "configMapKeyRef" in ref:
            key_ref = ref.get("secretKeyRef") or ref["configMapKeyRef"]
            data = sources.secret(key_ref["name"]) if "secretKeyRef" in ref else sources.config_map(key_ref["name"])
            if key_ref["key"] in data:
                env[item["name"]] = data[key_ref["key"]]
            else:
                assert key_ref.get("optional"), f"{item['name']}: {key_ref['name']} has no key {key_ref['key']}"
        elif "fieldRef" in ref:
            env[item["name"]] = {"status.podIP": "127.0.0.1", "metadata.namespace": NAMESPACE}.get(
                ref["fieldRef"]["fieldPath"], f"pod-{ref['fieldRef']['fieldPath']}"
            )
        else:
            raise AssertionError(f"{item['name']}: unsupported valueFrom {sorted(ref)}")
    return env


def expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion of earlier variables ($$ escapes)."""
    out, i = [], 0
    while i < len(value):
        if value.startswith("$$", i):
            out.append("$")
            i += 2
        elif value.startswith("$(", i) and (end := value.find(")", i)) > 0 and value[i + 2 : end] in env:
            out.append(env[value[i + 2 : end]])
            i = end + 1
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


def secret_mounts(pod_spec: Doc, box: Doc, sources: Sources) -> dict[str, dict[str, str]]:
    """mountPath -> {file name: content} for each Secret volume (or projected Secret) the container mounts."""
    volumes = {v["name"]: v for v in pod_spec.get("volumes") or []}
    mounts: dict[str, dict[str, str]] = {}
    for mount in box.get("volumeMounts") or []:
        volume = volumes[mount["name"]]
        secrets = [volume["secret"]] if "secret" in volume else []
        secrets += [s["secret"] for s in (volume.get("projected") or {}).get("sources", []) if "secret" in s]
        files: dict[str, str] = {}
        for ref in secrets:
            data = sources.secret(ref["secretName"] if "secretName" in ref else ref["name"])
            items = ref.get("items") or [{"key": key, "path": key} for key in data]
            files.update({item["path"]: data[item["key"]] for item in items})
        if secrets:
            subpath = mount.get("subPath")
            mounts[mount["mountPath"]] = {"": files[subpath]} if subpath else files
    return mounts


def empty_dir_mounts(pod_spec: Doc, box: Doc) -> list[str]:
    """The mount paths of the container's emptyDir volumes (its writable places)."""
    volumes = {v["name"]: v for v in pod_spec.get("volumes") or []}
    return [m["mountPath"] for m in box.get("volumeMounts") or [] if "emptyDir" in volumes[m["name"]]]
