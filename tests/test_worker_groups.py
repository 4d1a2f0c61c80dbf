"""The deployment's worker groups (DISTILLERY_WORKER_GROUPS) and the compute a run gets from them: asked compute is
a requirement (refused naming the field when no group offers it), a recipe's is a preference capped to the group."""

from __future__ import annotations

import dataclasses
import json

import pytest

from distillery.common.v1 import common_pb2
from distillery.trainer.v1 import trainer_pb2 as pb
from services.common.errors import InvalidArgument
from services.trainer import run_requests, worker_groups
from services.trainer.recipes.job_spec import JobSpec
from services.trainer.recipes.sft_settings import SftSettings
from services.trainer.worker_groups import Deployment, WorkerGroup

GROUPS = json.dumps([
    {"name": "cpu", "max_workers": 4, "cpus_per_worker": 2},
    {"name": "l4", "max_workers": 8, "gpus_per_worker": 1, "cpus_per_worker": 8, "gpu_type": "L4"},
    {"name": "h100", "max_workers": 2, "gpus_per_worker": 8, "cpus_per_worker": 32, "gpu_type": "H100"},
])  # fmt: skip
CLUSTER = Deployment(groups=worker_groups.parse(GROUPS))
PLAIN = dict(path=common_pb2.TRAINING_PATH_FINETUNE_TEXT, dataset_id="ds_1", student_model="o/m")


def compute_of(deployment: Deployment = CLUSTER, recipe: str = "", **asked: object) -> dict[str, object]:
    request = pb.CreateRunRequest(**PLAIN, recipe=recipe, compute=pb.Compute(**asked))  # type: ignore[arg-type]
    return run_requests.checked(request, deployment=deployment)["compute"]


def test_the_groups_are_read_from_json_and_bad_ones_are_refused_naming_the_key() -> None:
    cpu, l4, h100 = CLUSTER.groups
    assert cpu == WorkerGroup("cpu", 4, 0, 2.0, "", 1) and (l4.gpu_type, h100.gpus_per_worker) == ("L4", 8)
    assert worker_groups.parse("") == () and Deployment(workers=3).worker_groups()[0].default_workers == 3
    for value, words in [
        ("{", "is not JSON"),
        ("[]", "non-empty JSON list"),
        ('[{"name": "cpu"}]', r"\[0\].max_workers=None"),
        ('[{"name": "cpu", "max_workers": 2, "gpus": 1}]', "gpus is not a key"),
        ('[{"name": "GPU", "max_workers": 2}]', r"\[0\].name='GPU'"),
        ('[{"name": "a", "max_workers": 1}, {"name": "a", "max_workers": 2}]', "names must differ"),
        ('[{"name": "a", "max_workers": 1, "cpus_per_worker": -1}]', "cpus_per_worker=-1"),
    ]:
        with pytest.raises(InvalidArgument, match=words):
            worker_groups.parse(value)


def test_asked_compute_goes_to_the_first_group_that_offers_it() -> None:
    assert compute_of(workers=2) == {"workers": 2}  # the first group; it declares 2 CPUs, nothing asked of them
    assert compute_of(workers=6) == {"workers": 6, "gpus_per_worker": 1, "gpu_type": "L4"}  # only l4 has 6
    assert compute_of(gpus_per_worker=1) == {"workers": 1, "gpus_per_worker": 1, "gpu_type": "L4"}
    assert compute_of(gpus_per_worker=4, workers=2) == {"workers": 2, "gpus_per_worker": 4, "gpu_type": "H100"}
    assert compute_of(gpu_type="h100") == {"workers": 1, "gpus_per_worker": 1, "gpu_type": "H100"}  # one unless asked
    assert compute_of(cpus_per_worker=0.5, workers=2) == {"workers": 2, "cpus_per_worker": 0.5}


@pytest.mark.parametrize(
    ("asked", "field", "value"),
    [
        ({"workers": 9}, "compute.workers", "9"),
        ({"gpus_per_worker": 16}, "compute.gpus_per_worker", "16"),
        ({"gpu_type": "A100"}, "compute.gpu_type", "A100"),
        ({"gpu_type": "H100", "workers": 3}, "compute.workers", "3"),
        ({"cpus_per_worker": 64}, "compute.cpus_per_worker", "64.0"),
    ],
)
def test_compute_no_group_offers_is_refused_naming_the_field_and_listing_the_groups(
    asked: dict[str, object], field: str, value: str
) -> None:
    with pytest.raises(InvalidArgument) as err:
        compute_of(**asked)
    assert err.value.field == field
    message = err.value.message
    assert message.startswith(f"{field}={value}: no worker group of this deployment can run it"), message
    assert "cpu: up to 4 workers, 0 GPUs, 2 CPUs each" in message
    assert (
        "l4: up to 8 workers, 1 GPU (L4), 8 CPUs each" in message
        and "h100: up to 2 workers, 8 GPUs (H100), 32 CPUs each" in message
    )
    assert "DISTILLERY_WORKER_GROUPS" in message


def test_a_recipes_compute_is_a_preference_capped_to_the_group() -> None:
    # classify: 1 worker, 4 CPUs, 1 GPU, L4 -> the l4 group, its 4 CPUs within the group's 8
    assert compute_of(recipe="classify") == {"workers": 1, "cpus_per_worker": 4.0, "gpus_per_worker": 1,
                                             "gpu_type": "L4"}  # fmt: skip
    # the request's GPU type wins over the recipe's L4; the recipe's 4 CPUs and 1 GPU still apply there
    assert compute_of(recipe="classify", workers=2, gpu_type="H100") == {
        "workers": 2,
        "cpus_per_worker": 4.0,
        "gpus_per_worker": 1,
        "gpu_type": "H100",
    }
    gpu_default = dataclasses.replace(CLUSTER, use_gpu=True)  # DISTILLERY_TRAIN_USE_GPU: a GPU group first
    assert compute_of(gpu_default, workers=2) == {"workers": 2, "gpus_per_worker": 1, "gpu_type": "L4"}
    cpu_only = Deployment(groups=(WorkerGroup("cpu", 2, cpus_per_worker=2),))
    assert compute_of(cpu_only, recipe="classify") == {"workers": 1, "cpus_per_worker": 2.0}  # no GPU here
    with pytest.raises(InvalidArgument) as err:  # but a GPU the request asks for is refused
        compute_of(cpu_only, recipe="classify", gpus_per_worker=1)
    assert err.value.field == "compute.gpus_per_worker"


def test_the_job_asks_ray_for_the_recorded_compute() -> None:
    stored = {"compute": compute_of(gpus_per_worker=4, workers=2)}
    assert worker_groups.job_compute(stored, CLUSTER) == (2, True)
    assert worker_groups.job_resources(stored) == {"cpus_per_worker": 0.0, "gpus_per_worker": 4, "gpu_type": "H100"}
    assert worker_groups.job_compute({}, Deployment(workers=3)) == (3, False)  # a run from before compute
    spec = JobSpec(run_id="run_1", tenant_id="t", student_model="o/m", train_key="k", eval_key="e",
                   output_prefix="tenants/t/runs/run_1", sft=SftSettings(), num_workers=2, use_gpu=True,
                   **worker_groups.job_resources(stored))  # fmt: skip
    assert JobSpec.from_json(spec.to_json()) == spec
    with pytest.raises(InvalidArgument) as err:
        JobSpec.from_dict({**json.loads(spec.to_json()), "cpus_per_worker": -1})
    assert err.value.field == "spec.cpus_per_worker"
