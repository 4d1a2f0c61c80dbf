"""Kubernetes NetworkPolicy semantics, enough to ask a rendered chart "may pod A open port P on pod B?".

Pods of one namespace: a pod is isolated for a direction once any policy of that type selects it; then a
connection needs a rule of a selecting policy whose peer matches the other pod and whose ports hold the port
(a named port is the destination container's). ``ipBlock`` peers are taken to match no pod (they are for
addresses outside the cluster). The Ray pods KubeRay makes get the labels KubeRay gives them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from helm_chart import NAMESPACE, Doc, Rendered


@dataclass(frozen=True)
class Pod:
    where: str  # "Deployment/<name>", "RayCluster/<name>/<group>"
    labels: Mapping[str, str]
    ports: Mapping[str, int]  # named container ports
    numbers: frozenset[int]  # every container port
    namespace: str = NAMESPACE


def _pod(where: str, labels: Mapping[str, str], spec: Doc) -> Pod:
    ports = [p for box in spec["containers"] for p in box.get("ports") or []]
    return Pod(
        where,
        dict(labels),
        {p["name"]: p["containerPort"] for p in ports if "name" in p},
        frozenset(p["containerPort"] for p in ports),
    )


def pods(chart: Rendered) -> Iterator[Pod]:
    """Every pod the release runs, with its labels (KubeRay's own labels added to the Ray pods)."""
    for doc in chart.documents:
        if doc["kind"] in ("Deployment", "StatefulSet", "Job"):
            template = doc["spec"]["template"]
            yield _pod(f"{doc['kind']}/{doc['metadata']['name']}", template["metadata"]["labels"], template["spec"])
        elif doc["kind"] == "RayCluster":
            name, spec = doc["metadata"]["name"], doc["spec"]
            groups = [("headgroup", "head", spec["headGroupSpec"])]
            groups += [(g["groupName"], "worker", g) for g in spec.get("workerGroupSpecs") or []]
            for group, node_type, group_spec in groups:
                template = group_spec["template"]
                kuberay = {"ray.io/cluster": name, "ray.io/node-type": node_type, "ray.io/group": group}
                labels = {**(template.get("metadata") or {}).get("labels", {}), **kuberay}
                yield _pod(f"RayCluster/{name}/{group}", labels, template["spec"])


def selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """A LabelSelector's match ({} selects everything)."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values") or []
        matched = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[operator]
        if not matched:
            return False
    return True


def _peer_matches(peer: Doc, other: Pod) -> bool:
    if "ipBlock" in peer:
        return False
    if "namespaceSelector" in peer:
        namespace_ok = selects(peer["namespaceSelector"], {"kubernetes.io/metadata.name": other.namespace})
    else:
        namespace_ok = other.namespace == NAMESPACE
    return namespace_ok and ("podSelector" not in peer or selects(peer["podSelector"], other.labels))


def _port_matches(rule_ports: list[Doc] | None, port: int, destination: Pod) -> bool:
    if not rule_ports:
        return True
    for entry in rule_ports:
        if entry.get("protocol", "TCP") != "TCP":
            continue
        wanted = entry.get("port")
        if wanted is None:
            return True
        number = destination.ports.get(wanted) if isinstance(wanted, str) else int(wanted)
        if number is not None and number <= port <= int(entry.get("endPort") or number):
            return True
    return False


def _allowed(policies: list[Doc], pod: Pod, other: Pod, port: int, destination: Pod, direction: str) -> bool:
    kind, peers = ("Ingress", "from") if direction == "ingress" else ("Egress", "to")
    selecting = [
        p
        for p in policies
        if pod.namespace == NAMESPACE  # the release's policies hold in its namespace only
        and selects(p["spec"]["podSelector"], pod.labels)
        and kind in p["spec"].get("policyTypes", ["Ingress"])
    ]
    if not selecting:
        return True
    for policy in selecting:
        for rule in policy["spec"].get(direction) or []:
            peer_ok = not rule.get(peers) or any(_peer_matches(peer, other) for peer in rule[peers])
            if peer_ok and _port_matches(rule.get("ports"), port, destination):
                return True
    return False


def may_connect(chart: Rendered, source: Pod, destination: Pod, port: int) -> bool:
    """Whether the release's NetworkPolicies let ``source`` open TCP ``port`` on ``destination``."""
    policies = chart.of_kind("NetworkPolicy")
    return _allowed(policies, source, destination, port, destination, "egress") and _allowed(
        policies, destination, source, port, destination, "ingress"
    )
