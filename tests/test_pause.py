"""Pausing and resuming a run over the real stack: the job saves a checkpoint and stops, the run keeps its
allowance slot, and a resumed run goes on from that checkpoint's step (not from step 0) to SUCCEEDED."""

from __future__ import annotations

import re
import time
from functools import partial

import grpc
import pytest
from rpc_refusals import refused
from test_services import upload
from test_training import ROWS, run_request, states, training_step, wait_for, watch
from tiny_models import build_llama

from distillery.registry.v1 import registry_pb2
from distillery.trainer.v1 import trainer_pb2 as pb

# Long enough to pause mid-way; a periodic checkpoint only at 50, so a resume from the pause's own checkpoint
# shows (a step that is not a multiple of 50). Evals off: steps are the story here.
SLOW = pb.SftSettings(
    max_steps=60, learning_rate=5e-3, batch_size=4, checkpoint_every_steps=50, lora_r=8, eval_every_steps=-1
)
RESUMED = re.compile(r"resuming from the checkpoint at step (\d+)")


@pytest.fixture(scope="module")
def student(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(build_llama(tmp_path_factory.mktemp("pause-student") / "tiny-llama"))


def events_so_far(client, run_id: str) -> list[pb.RunEvent]:
    """The run's events until now (WatchRun goes on until the run is final: cut it after 2 s)."""
    found: list[pb.RunEvent] = []
    try:
        for event in client.trainer.WatchRun(pb.WatchRunRequest(id=run_id), timeout=2):
            found.append(event)
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, err
    return found


def notes(events: list[pb.RunEvent]) -> list[str]:
    return [e.log.text for e in events if e.WhichOneof("payload") == "log"]


def test_a_paused_run_frees_its_job_keeps_its_slot_and_resumes_from_its_checkpoint(
    services, client_for, make_tenant, student
):
    client = client_for(make_tenant())
    dataset = upload(client, ROWS).dataset
    run = client.trainer.CreateRun(run_request(dataset.id, student, SLOW))
    refused(partial(client.trainer.PauseRun, pb.PauseRunRequest(id=run.id)), grpc.StatusCode.FAILED_PRECONDITION)
    wait_for(lambda: training_step(client, run.id) >= 8, timeout=300)

    paused = client.trainer.PauseRun(pb.PauseRunRequest(id=run.id))
    assert paused.state == pb.RUN_STATE_PAUSED
    err = refused(partial(client.trainer.PauseRun, pb.PauseRunRequest(id=run.id)), grpc.StatusCode.FAILED_PRECONDITION)
    assert "only a TRAINING run can be paused" in err.details()
    # The job saves a checkpoint and stops; the trainer says so once it has ended.
    said = wait_for(lambda: [n for n in notes(events_so_far(client, run.id)) if n.startswith("paused after step")],
                    timeout=180)  # fmt: skip
    assert len(said) == 1, said
    held = client.trainer.GetRun(pb.GetRunRequest(id=run.id))
    time.sleep(3)  # nothing trains while paused
    still = client.trainer.GetRun(pb.GetRunRequest(id=run.id))
    assert still.state == pb.RUN_STATE_PAUSED and still.progress.step == held.progress.step < SLOW.max_steps
    quota = client.registry.GetQuota(registry_pb2.GetQuotaRequest())
    assert (quota.reserved, quota.used) == (1, 0)  # the slot is kept

    resumed = client.trainer.ResumeRun(pb.ResumeRunRequest(id=run.id))
    assert resumed.state == pb.RUN_STATE_TRAINING
    refused(partial(client.trainer.ResumeRun, pb.ResumeRunRequest(id=run.id)), grpc.StatusCode.FAILED_PRECONDITION)
    events = watch(client, run.id, timeout=300)
    done = client.trainer.GetRun(pb.GetRunRequest(id=run.id))
    assert done.state == pb.RUN_STATE_SUCCEEDED, done.error
    assert states(events)[-5:] == [
        pb.RUN_STATE_PAUSED, pb.RUN_STATE_TRAINING, pb.RUN_STATE_EVALUATING, pb.RUN_STATE_REGISTERING,
        pb.RUN_STATE_SUCCEEDED,
    ]  # fmt: skip
    # Steps went on from the checkpoint the paused job saved where it stopped: not step 0, not the periodic one.
    starts = [int(m.group(1)) for n in notes(events) if (m := RESUMED.match(n))]
    assert len(starts) == 1 and held.progress.step <= starts[0] < SLOW.max_steps and starts[0] % 50, starts
    steps = [e.progress.step for e in events if e.WhichOneof("payload") == "progress" and e.progress.step]
    assert steps[-1] == SLOW.max_steps and done.metrics["steps"] == SLOW.max_steps
    quota = client.registry.GetQuota(registry_pb2.GetQuotaRequest())
    assert (quota.reserved, quota.used) == (0, 1)


def test_a_paused_run_can_be_cancelled_and_gives_its_slot_back(services, client_for, make_tenant, student):
    client = client_for(make_tenant())
    dataset = upload(client, ROWS).dataset
    run = client.trainer.CreateRun(run_request(dataset.id, student, SLOW))
    wait_for(lambda: training_step(client, run.id) >= 2, timeout=300)
    client.trainer.PauseRun(pb.PauseRunRequest(id=run.id))
    cancelled = client.trainer.CancelRun(pb.CancelRunRequest(id=run.id))
    assert cancelled.state == pb.RUN_STATE_CANCELLED
    wait_for(lambda: client.registry.GetQuota(registry_pb2.GetQuotaRequest()).reserved == 0, timeout=30)
    refused(partial(client.trainer.ResumeRun, pb.ResumeRunRequest(id=run.id)), grpc.StatusCode.FAILED_PRECONDITION)
