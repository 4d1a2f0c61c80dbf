"""A run on two Ray Train workers (CPU, gloo), over the real services: the compute the run asks for reaches the job's
ScalingConfig, the data is sharded between the ranks, only rank 0 reports progress and metrics and saves the
model, and exactly one model is registered. The trainer here declares a worker group of 2 CPU workers
(DISTILLERY_WORKER_GROUPS); it refuses, naming the field, what no group offers."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
from minio import Minio
from rpc_refusals import assert_refused
from test_services import upload
from test_training import FINAL, QUICK, ROWS, run_request, watch
from test_training import student as student  # a fixture

from distillery.client import Client
from distillery.registry.v1 import registry_pb2
from distillery.trainer.v1 import trainer_pb2 as pb
from services.trainer import server as trainer_server
from services.trainer.worker_groups import WorkerGroup

WORKERS = 2


@pytest.fixture
def two_worker_client(services, make_tenant):
    """A client of a second trainer whose deployment offers one group of 2 CPU workers (the session's offers 1)."""
    settings = dataclasses.replace(services.trainer_settings(), worker_groups=(WorkerGroup("cpu", WORKERS),))
    trainer = services.loop.run(trainer_server.create(settings))
    tenant = make_tenant()
    client = Client({**services.addresses, "trainer": trainer.address}, tenant.api_key, timeout=20)
    client.tenant_id = tenant.tenant_id  # type: ignore[attr-defined]  # where its runs write in S3
    yield client
    client.close()
    services.loop.run(trainer.stop(1.0))


def test_compute_no_worker_group_offers_is_refused_at_create_run(two_worker_client, student):
    dataset = upload(two_worker_client, ROWS).dataset
    for compute, field in [(pb.Compute(workers=3), "compute.workers"),
                           (pb.Compute(gpus_per_worker=1), "compute.gpus_per_worker"),
                           (pb.Compute(gpu_type="L4"), "compute.gpu_type")]:  # fmt: skip
        request = run_request(dataset.id, student, compute=compute)
        err = assert_refused(lambda r=request: two_worker_client.trainer.CreateRun(r), field)
        assert (
            "no worker group of this deployment can run it" in err.details() and "cpu: up to 2 workers" in err.details()
        )


def test_a_two_worker_cpu_run_shards_its_data_reports_from_rank_0_and_registers_one_model(
    services,
    two_worker_client,
    student,
):
    client = two_worker_client
    dataset = upload(client, ROWS).dataset
    # half a CPU each: the two workers fit beside the session's other Ray work on a 2-core machine
    compute = pb.Compute(workers=WORKERS, cpus_per_worker=0.5)
    run = client.trainer.CreateRun(run_request(dataset.id, student, model_name="colours-2w", compute=compute))
    assert (run.request.compute.workers, run.request.compute.cpus_per_worker) == (WORKERS, 0.5)
    try:
        events = watch(client, run.id)
    finally:  # a run left going would hold both workers, and the session's later runs would wait for them
        if client.trainer.GetRun(pb.GetRunRequest(id=run.id)).state not in FINAL:
            client.trainer.CancelRun(pb.CancelRunRequest(id=run.id))
    done = client.trainer.GetRun(pb.GetRunRequest(id=run.id))
    assert done.state == pb.RUN_STATE_SUCCEEDED, done.error

    s3 = Minio(services.s3.endpoint, services.s3.access_key, services.s3.secret_key, secure=False)
    prefix = f"tenants/{client.tenant_id}/runs/{run.id}"
    spec = json.loads(s3.get_object(services.s3.bucket, f"{prefix}/spec.json").read())
    assert (spec["num_workers"], spec["cpus_per_worker"], spec["use_gpu"]) == (WORKERS, 0.5, False)

    # progress once per step at most, from one rank: steps never repeat, and the last is the run's last step
    progress = [e.progress for e in events if e.WhichOneof("payload") == "progress"]
    steps = [p.step for p in progress]
    assert steps == sorted(set(steps)) and steps[-1] == QUICK.max_steps, steps
    losses = [e.metrics.step for e in events if "loss" in e.metrics.values]
    assert losses == sorted(set(losses)) and len(losses) == QUICK.max_steps, losses  # one loss a step, not two
    # the data is sharded: a step takes batch_size rows on each rank, so an epoch is half as many steps as on one
    train_rows = int(done.metrics["train_rows"])
    steps_per_epoch = math.ceil(math.ceil(train_rows / WORKERS) / QUICK.batch_size)
    assert progress[-1].epoch == pytest.approx(QUICK.max_steps / steps_per_epoch, rel=0.02), (train_rows, progress[-1])

    # the checkpoints (every 12 steps): rank 0's weights and trainer state, and each rank's RNG state, in one
    # checkpoint per save (Ray Train merges the ranks' files)
    saved: dict[str, set[str]] = {}
    for item in s3.list_objects(services.s3.bucket, f"{prefix}/ray/{run.id}/", recursive=True):
        directory, _, name = item.object_name.removeprefix(f"{prefix}/ray/{run.id}/").partition("/checkpoint/")
        if name:
            saved.setdefault(directory, set()).add(name)
    assert saved and all(files >= {"adapter_model.safetensors", "trainer_state.json"} for files in saved.values())
    assert all({f for f in files if f.startswith("rng_state")} == {"rng_state_0.pth", "rng_state_1.pth"}
               for files in saved.values()), saved  # fmt: skip
    config = json.loads(s3.get_object(services.s3.bucket, f"{prefix}/model/training_config.json").read())
    assert config["num_workers"] == WORKERS
    models = client.registry.ListModels(registry_pb2.ListModelsRequest()).models
    assert [m.id for m in models if m.run_id == run.id] == [done.model_id]
