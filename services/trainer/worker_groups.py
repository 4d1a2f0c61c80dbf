"""The compute a run's training job gets: the worker groups a deployment declares, and which one a run's
compute fits (docs/configuration.md, ``DISTILLERY_WORKER_GROUPS``; docs/kubernetes.md).

A worker group is a kind of Ray worker the deployment's Ray cluster can give a job (in Kubernetes, one of the
RayCluster's worker groups): at most ``max_workers`` workers, each with ``gpus_per_worker`` GPUs of
``gpu_type`` (Ray's accelerator name: L4, A100, H100, ...) and ``cpus_per_worker`` CPUs (0: not declared).
Without ``DISTILLERY_WORKER_GROUPS`` the deployment has one group, ``default``, made from
``DISTILLERY_TRAIN_WORKERS`` (its most workers, and a run's default) and ``DISTILLERY_TRAIN_USE_GPU``; with it,
``DISTILLERY_TRAIN_USE_GPU`` sends a run that names no GPU to a GPU group where one fits.

A run's compute (``resolve_compute``): what the request asks (``runs create --workers --gpus-per-worker
--gpu-type --cpus-per-worker``) is a requirement: a group must offer at least that, else CreateRun refuses it
(INVALID_ARGUMENT naming the field and listing the groups). What the recipe adds is a preference: the first
group that fits the request, and among those one with the GPUs (and GPU type) the recipe names; the recipe's
numbers are capped to that group. The job then asks Ray Train for exactly the compute recorded on the run
(``job_compute``, and ``job_resources`` for the spec's per-worker resources).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format

from distillery.trainer.v1 import trainer_pb2 as pb
from services.common.errors import InvalidArgument

VARIABLE = "DISTILLERY_WORKER_GROUPS"
_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_KEYS = ("name", "max_workers", "gpus_per_worker", "cpus_per_worker", "gpu_type", "default_workers")


@dataclass(frozen=True)
class WorkerGroup:
    """One kind of Ray worker a deployment offers its training jobs."""

    name: str
    max_workers: int
    gpus_per_worker: int = 0
    cpus_per_worker: float = 0.0  # 0: not declared; a CPU job then shares a node's CPUs among its workers
    gpu_type: str = ""  # Ray's accelerator type (L4, A100, H100...); "" for CPU groups or an unnamed GPU
    default_workers: int = 1  # a run's workers when neither it nor its recipe says

    def offers(self) -> str:
        gpus = f"{self.gpus_per_worker} GPU{'s' * (self.gpus_per_worker != 1)}"
        gpus += f" ({self.gpu_type})" * bool(self.gpu_type and self.gpus_per_worker)
        cpus = f", {self.cpus_per_worker:g} CPUs" if self.cpus_per_worker else ""
        return f"{self.name}: up to {self.max_workers} workers, {gpus}{cpus} each"

    def misfits(self, asked: pb.Compute) -> list[str]:
        """The fields of ``asked`` this group cannot give (0 or "" asks nothing)."""
        out = []
        if asked.gpu_type and asked.gpu_type.lower() != self.gpu_type.lower():
            out.append("gpu_type")
        if asked.gpus_per_worker > self.gpus_per_worker:
            out.append("gpus_per_worker")
        if asked.cpus_per_worker and self.cpus_per_worker and asked.cpus_per_worker > self.cpus_per_worker:
            out.append("cpus_per_worker")
        if asked.workers > self.max_workers:
            out.append("workers")
        return out


@dataclass(frozen=True)
class Deployment:
    """What the deployment gives a training job: its worker groups (``DISTILLERY_WORKER_GROUPS``), else one made
    from ``DISTILLERY_TRAIN_WORKERS`` (the default and the most) and ``DISTILLERY_TRAIN_USE_GPU``."""

    workers: int = 1
    use_gpu: bool = False
    groups: tuple[WorkerGroup, ...] = ()

    def worker_groups(self) -> tuple[WorkerGroup, ...]:
        if self.groups:
            return self.groups
        gpus = int(self.use_gpu)
        return (WorkerGroup("default", self.workers, gpus_per_worker=gpus, default_workers=self.workers),)


def parse(value: str) -> tuple[WorkerGroup, ...]:
    """``DISTILLERY_WORKER_GROUPS``: a JSON list of groups (``_KEYS``); "" for none (the default group)."""
    if not value.strip():
        return ()
    try:
        data = json.loads(value)
    except ValueError as err:
        raise InvalidArgument(f"{VARIABLE} is not JSON ({err}): give a list such as "
                              '[{"name": "cpu", "max_workers": 4}]') from None  # fmt: skip
    if not isinstance(data, list) or not data:
        raise InvalidArgument(f"{VARIABLE} must be a non-empty JSON list of worker groups")
    groups = [_group(i, item) for i, item in enumerate(data)]
    names = [group.name for group in groups]
    if len(set(names)) != len(names):
        raise InvalidArgument(f"{VARIABLE}: group names must differ (got {', '.join(names)})")
    return tuple(groups)


def _group(i: int, item: Any) -> WorkerGroup:
    where = f"{VARIABLE}[{i}]"
    if not isinstance(item, dict):
        raise InvalidArgument(f"{where} must be an object with some of {', '.join(_KEYS)}")
    if unknown := sorted(set(item) - set(_KEYS)):
        raise InvalidArgument(f"{where}: {', '.join(unknown)} is not a key: give some of {', '.join(_KEYS)}")
    name, gpu_type = item.get("name"), item.get("gpu_type", "")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidArgument(f"{where}.name={name!r}: give 1-63 lowercase letters, digits or '-'")
    if not isinstance(gpu_type, str) or len(gpu_type) > 64:
        raise InvalidArgument(f'{where}.gpu_type={gpu_type!r}: give Ray\'s accelerator name (L4, A100, H100) or ""')
    whole: dict[str, Any] = {key: item.get(key, default) for key, default in
             (("max_workers", None), ("gpus_per_worker", 0), ("default_workers", 1))}  # fmt: skip
    for key, number in whole.items():
        if isinstance(number, bool) or not isinstance(number, int) or number < (key != "gpus_per_worker"):
            raise InvalidArgument(f"{where}.{key}={number!r}: give a whole number of at least "
                                  f"{int(key != 'gpus_per_worker')}")  # fmt: skip
    cpus = item.get("cpus_per_worker", 0)
    if isinstance(cpus, bool) or not isinstance(cpus, int | float) or not (math.isfinite(cpus) and cpus >= 0):
        raise InvalidArgument(f"{where}.cpus_per_worker={cpus!r}: give a number of at least 0 (0: not declared)")
    return WorkerGroup(name, whole["max_workers"], whole["gpus_per_worker"], float(cpus), gpu_type,
                       min(whole["default_workers"], whole["max_workers"]))  # fmt: skip


def choose(
    asked: pb.Compute, preferred: pb.Compute, groups: tuple[WorkerGroup, ...], gpu_default: bool = False
) -> WorkerGroup:
    """The first group that gives everything ``asked`` asks, preferring one with the GPUs (and type) that
    ``preferred`` names (with ``gpu_default``, ``DISTILLERY_TRAIN_USE_GPU``, one with GPUs when it names none);
    INVALID_ARGUMENT naming a field of ``asked`` and listing the groups when none can."""
    fitting = [group for group in groups if not group.misfits(asked)]
    if not fitting:
        # the field that the nearest group lacks: the fewest misfits, the GPU's kind before the numbers
        nearest = min((group.misfits(asked) for group in groups),
                      key=lambda m: (len(m), "gpu_type" in m, "gpus_per_worker" in m))  # fmt: skip
        field = nearest[0]
        offered = "; ".join(group.offers() for group in groups)
        raise InvalidArgument(
            f"compute.{field}={getattr(asked, field)}: no worker group of this deployment can run it (it offers "
            f"{offered}): ask for what a group offers, or ask the operator for such a group ({VARIABLE})",
            field=f"compute.{field}",
        )
    wants_gpu, wants_type = preferred.gpus_per_worker > 0 or gpu_default, preferred.gpu_type.lower()
    return min(fitting, key=lambda g: ((g.gpus_per_worker > 0) != wants_gpu,
                                       bool(wants_type) and g.gpu_type.lower() != wants_type))  # fmt: skip


def resolve_compute(asked: pb.Compute, deployment: Deployment, preferred: pb.Compute | None = None) -> dict[str, Any]:
    """The compute recorded on a run: ``asked`` (the request's own) where it asks, else ``preferred`` (the
    request with its recipe's values) capped to the chosen group, else the group's."""
    preferred = asked if preferred is None else preferred
    group = choose(asked, preferred, deployment.worker_groups(), deployment.use_gpu)
    gpus = asked.gpus_per_worker or (min(preferred.gpus_per_worker or 1, group.gpus_per_worker)
                                     if group.gpus_per_worker else 0)  # fmt: skip
    cpus = asked.cpus_per_worker or min(preferred.cpus_per_worker, group.cpus_per_worker)
    resolved = pb.Compute(
        workers=asked.workers or min(preferred.workers or group.default_workers, group.max_workers),
        cpus_per_worker=cpus, gpus_per_worker=gpus, gpu_type=group.gpu_type if gpus else "",
    )  # fmt: skip
    return json_format.MessageToDict(resolved, preserving_proto_field_name=True)


def job_compute(request: dict[str, Any], deployment: Deployment) -> tuple[int, bool]:
    """Workers and GPU use of a run's job: its recorded compute (a run from before compute was recorded: the
    deployment's first group's)."""
    if "compute" not in request:
        group = deployment.worker_groups()[0]
        return group.default_workers, group.gpus_per_worker > 0
    compute = request["compute"]
    return max(int(compute.get("workers") or 1), 1), int(compute.get("gpus_per_worker", 0)) > 0


def job_resources(request: dict[str, Any]) -> dict[str, Any]:
    """The per-worker resources of a run's job spec (``JobSpec``'s cpus_per_worker, gpus_per_worker, gpu_type)."""
    compute = request.get("compute") or {}
    return {
        "cpus_per_worker": float(compute.get("cpus_per_worker", 0.0)),
        "gpus_per_worker": int(compute.get("gpus_per_worker", 0)),
        "gpu_type": str(compute.get("gpu_type", "")),
    }
