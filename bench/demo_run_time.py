"""How long a demo's training run takes on the running local stack, and what it reports.

    python -m bench.demo_run_time run      # make run's run (examples/main_job.py's request)
    python -m bench.demo_run_time tools    # make distill-tools' run (examples/distill_tools_job.py's request)

Creates a run with the demo's own settings under a fresh idempotency key (so a finished demo run is not
reused), times it from CreateRun to its final state (GetRun every 5 s), and prints the wall time, the mean
load average while it ran and the run's metrics. It measures one side of a before/after comparison: run it
once on each code version on the same idle machine (docs/performance.md, "The demos, before and after").
Not part of `make bench` (a run takes minutes to most of an hour on CPU).
"""

from __future__ import annotations

import os
import sys
import time

from distillery.client import Client, home
from distillery.common.v1 import common_pb2
from distillery.demo_model import ensure_demo_model
from distillery.trainer.v1 import trainer_pb2 as pb
from examples import distill_tools_job, main_job

FINAL = (pb.RUN_STATE_SUCCEEDED, pb.RUN_STATE_FAILED, pb.RUN_STATE_CANCELLED)


def request(client: Client, which: str, key: str) -> pb.CreateRunRequest:
    student = str(ensure_demo_model(home() / "models"))
    if which == "run":
        dataset = main_job.upload(client, main_job.DATASET)
        return pb.CreateRunRequest(
            path=common_pb2.TRAINING_PATH_FINETUNE_TEXT, recipe=main_job.RECIPE, dataset_id=dataset.id,
            student_model=student, sft=main_job.SFT, model_name="support-triage", idempotency_key=key,
        )  # fmt: skip
    dataset = distill_tools_job.stand_in_dataset(client)
    return pb.CreateRunRequest(
        path=common_pb2.TRAINING_PATH_DISTILL_TOOLS, mode=common_pb2.TRAINING_MODE_SFT_RL, dataset_id=dataset.id,
        eval_fraction=distill_tools_job.EVAL_FRACTION, student_model=student, sft=distill_tools_job.SFT,
        grpo=distill_tools_job.GRPO, model_name="tool-caller", idempotency_key=key,
    )  # fmt: skip


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in ("run", "tools"):
        print(__doc__)
        return 2
    which = argv[0]
    client = Client.from_environment(timeout=60)
    run = client.trainer.CreateRun(request(client, which, f"timing-{which}-{int(time.time())}"))
    print(f"created {run.id}", flush=True)
    started, loads = time.monotonic(), []
    while (run := client.trainer.GetRun(pb.GetRunRequest(id=run.id))).state not in FINAL:
        loads.append(os.getloadavg()[0])
        time.sleep(5)
    wall = time.monotonic() - started
    load = sum(loads) / max(len(loads), 1)
    print(f"{which} {run.id} {pb.RunState.Name(run.state)}: wall {wall:.0f} s, mean load average {load:.1f}")
    print({name: round(value, 4) for name, value in sorted(run.metrics.items())})
    return 0 if run.state == pb.RUN_STATE_SUCCEEDED else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
