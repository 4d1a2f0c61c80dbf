"""What the platform adds to a training job: a tiny run from ``CreateRun`` to SUCCEEDED, against the same job
submitted bare to Ray's Jobs API.

Starts a local stack (``distillery up`` in a temporary home), uploads a small pairs dataset, and for each
repeat (``--repeats``, default 3; the first is cold, the Ray head's first jobs, and left out of the means):

- platform: ``CreateRun`` (finetune-text, a tiny Llama of tests/tiny_models.py, ``STEPS`` steps) and polls
  ``GetRun`` every ``POLL_S`` until SUCCEEDED; its overhead is that wall time minus the recipe's own training
  time (the run's ``train_runtime_s`` metric: ``trainer.train()``'s runtime, mid-training evals included);
- floor: the job the trainer submitted for that run (``services/trainer/pipeline.py`` ``submit``: the same
  recipe module, the same spec with its own run id and output prefix, the same Ray head, ``JOB_TUNING`` and
  ``HF_HOME``), submitted bare through ``ray_jobs.RayJobs`` with the stack's S3 key in its environment (a
  throwaway stack's) and no trainer to push progress to, polled every ``POLL_S`` until SUCCEEDED; its
  overhead is the same wall time minus its own ``train_runtime_s``.

It prints both walls, both overheads, the platform's extra seconds and the ratio of the overheads, then where
the platform's time went: the seconds in each run state (from the run's state changes), with TRAINING split at
the job's submission (the trainer's "submitted Ray job" note), and inside the job its training time and its
answer evaluations (``answers.evaluate``'s log lines).

    python -m bench.bench_platform_overhead [--repeats 3] [--steps 8]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import re
import secrets
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

STEPS = 8
ANSWERS_LINE = re.compile(r"(base|final) answers \((\d+(?:\.\d+)?) s\)")
POLL_S = 0.2
TIMEOUT_S = 900.0
COLOURS = {"red": "rouge", "blue": "bleu", "green": "vert", "white": "blanc", "black": "noir", "grey": "gris"}
ROWS = b"".join(
    b'{"system_prompt": "Translate the colour to French.", "input": "%s, please (%d)", "output": "%s"}\n'
    % (english.encode(), i, french.encode())
    for i in range(8)
    for english, french in COLOURS.items()
)


@dataclass
class Timing:
    wall_s: float
    train_s: float
    states: dict[str, float] = field(default_factory=dict)  # seconds in each state, in order
    answers: dict[str, float] = field(default_factory=dict)  # seconds of each answer evaluation in the job's log

    @property
    def overhead_s(self) -> float:
        return self.wall_s - self.train_s


def upload(client: Any, data: bytes) -> str:
    import hashlib

    from distillery.ingest.v1 import ingest_pb2

    header = ingest_pb2.UploadHeader(
        filename="pairs.jsonl", kind=ingest_pb2.DATASET_KIND_PAIRS, format=ingest_pb2.FILE_FORMAT_JSONL,
        size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest(),
    )  # fmt: skip
    messages = [ingest_pb2.UploadDatasetRequest(header=header)]
    messages += [ingest_pb2.UploadDatasetRequest(chunk=ingest_pb2.Chunk(data=data[i : i + 65536]))
                 for i in range(0, len(data), 65536)]  # fmt: skip
    return str(client.ingest.UploadDataset(iter(messages)).dataset.id)


def platform_run(client: Any, dataset_id: str, student: str, steps: int) -> tuple[Any, Timing]:
    from distillery.common.v1 import common_pb2
    from distillery.trainer.v1 import trainer_pb2 as pb

    sft = pb.SftSettings(max_steps=steps, learning_rate=5e-3, batch_size=4, checkpoint_every_steps=steps, lora_r=8)
    request = pb.CreateRunRequest(
        path=common_pb2.TRAINING_PATH_FINETUNE_TEXT, dataset_id=dataset_id, student_model=student, sft=sft
    )
    started = time.perf_counter()
    run = client.trainer.CreateRun(request)
    deadline = started + TIMEOUT_S
    while run.state not in (pb.RUN_STATE_SUCCEEDED, pb.RUN_STATE_FAILED, pb.RUN_STATE_CANCELLED):
        if time.perf_counter() > deadline:
            raise RuntimeError(f"run {run.id} not final after {TIMEOUT_S:.0f} s")
        time.sleep(POLL_S)
        run = client.trainer.GetRun(pb.GetRunRequest(id=run.id))
    wall = time.perf_counter() - started
    if run.state != pb.RUN_STATE_SUCCEEDED:
        raise RuntimeError(f"run {run.id} ended {pb.RunState.Name(run.state)}: {run.error.message}")
    logs = client.trainer.GetRunLogs(pb.GetRunLogsRequest(id=run.id, tail=10_000)).lines
    answers = {m[1]: float(m[2]) for line in logs if (m := ANSWERS_LINE.search(line))}  # answers.evaluate's
    return run, Timing(wall, float(run.metrics["train_runtime_s"]), state_seconds(client, run.id), answers)


def state_seconds(client: Any, run_id: str) -> dict[str, float]:
    """Seconds in each state from the run's state changes; TRAINING split at the job's submission."""
    from distillery.trainer.v1 import trainer_pb2 as pb

    marks: list[tuple[str, float]] = []
    for event in client.trainer.WatchRun(pb.WatchRunRequest(id=run_id, after_sequence=0)):
        at = event.at.ToNanoseconds() / 1e9
        kind = event.WhichOneof("payload")
        if kind == "state_change":
            marks.append((pb.RunState.Name(event.state_change.to_state).removeprefix("RUN_STATE_"), at))
        elif kind == "log" and event.log.text.startswith("submitted Ray job") and marks:
            marks.append(("TRAINING (the Ray job)", at))
    seconds: dict[str, float] = {}
    for (name, at), (_, after) in itertools.pairwise(marks):
        label = "TRAINING (before the job's submission)" if name == "TRAINING" else name
        seconds[label] = seconds.get(label, 0.0) + after - at
    return seconds


def bare_job(stack: Any, run_id: str, tenant_id: str, recipe: str) -> Timing:
    """The run's job submitted again, bare, with its own run id and output prefix; submit to SUCCEEDED."""
    from services.common.objects import ObjectStore, tenant_key
    from services.common.settings import S3Settings
    from services.trainer import pipeline
    from services.trainer.job_access import cache_dir
    from services.trainer.ray_jobs import FINISHED, SUCCEEDED, RayJobs
    from services.trainer.recipes.job_spec import JobSpec
    from services.trainer.settings import Settings

    state = stack.state
    keys = state["secrets"]
    s3 = S3Settings(state["parts"]["s3"]["address"], keys["s3_access_key"], keys["s3_secret_key"], bucket="distillery")
    store = ObjectStore(s3)
    spec = JobSpec.from_json(store.get_bytes(f"{tenant_key(tenant_id, 'runs', run_id)}/spec.json"))
    bare_id = f"bare_{secrets.token_hex(8)}"
    prefix = tenant_key(tenant_id, "bare", bare_id)
    spec = replace(spec, run_id=bare_id, output_prefix=prefix)
    store.put_bytes(f"{prefix}/spec.json", spec.to_json().encode(), "application/json")
    env = {
        **pipeline.JOB_TUNING,
        "DISTILLERY_S3_ENDPOINT": s3.endpoint, "DISTILLERY_S3_BUCKET": s3.bucket, "DISTILLERY_S3_SECURE": "false",
        "DISTILLERY_S3_REGION": s3.region, "DISTILLERY_S3_ACCESS_KEY": s3.access_key,
        "DISTILLERY_S3_SECRET_KEY": s3.secret_key,
        "HF_HOME": cache_dir(Settings.job_cache_dir, tenant_id),  # the trainer's default, as the run's job got
    }  # fmt: skip
    entrypoint = f"{shlex.quote(sys.executable)} -m {recipe} --spec-key {shlex.quote(prefix + '/spec.json')}"
    ray = state["parts"]["ray"]
    jobs = RayJobs(ray["dashboard"], Path(ray["token_file"]).read_text().strip())

    async def submit_and_wait() -> float:
        started = time.perf_counter()
        await jobs.submit(bare_id, entrypoint, env)
        while True:
            job = await jobs.state(bare_id)
            if job is not None and job.status in FINISHED:
                if job.status != SUCCEEDED:
                    raise RuntimeError(f"the bare job ended {job.status}: {job.message}\n{await jobs.logs(bare_id)}")
                return time.perf_counter() - started
            if time.perf_counter() - started > TIMEOUT_S:
                raise RuntimeError(f"the bare job {bare_id} not finished after {TIMEOUT_S:.0f} s")
            await asyncio.sleep(POLL_S)

    wall = asyncio.run(submit_and_wait())
    result = json.loads(store.get_bytes(f"{prefix}/result.json"))
    return Timing(wall, float(result["metrics"]["train_runtime_s"]))


def report(pairs: list[tuple[Timing, Timing]], steps: int) -> None:
    print(f"tiny run: finetune-text, a tiny Llama (tests/tiny_models.py), {len(ROWS.splitlines())} rows, "
          f"{steps} steps; {len(pairs)} repeat(s), platform then bare in each")  # fmt: skip
    print(f"{'repeat':<8}{'side':<10}{'wall s':>9}{'train s':>9}{'overhead s':>12}")
    for n, (plat, bare) in enumerate(pairs, 1):
        for side, t in (("platform", plat), ("bare Ray", bare)):
            print(f"{n:<8}{side:<10}{t.wall_s:9.1f}{t.train_s:9.1f}{t.overhead_s:12.1f}")
    warm = pairs[1:] or pairs  # the first pair is the cold one (the Ray head's first jobs, the first S3 keys)
    plat_s = statistics.mean(p.overhead_s for p, _ in warm)
    bare_s = statistics.mean(b.overhead_s for _, b in warm)
    print(f"mean of repeats {'2-' + str(len(pairs)) if len(pairs) > 1 else '1'}: "
          f"platform overhead {plat_s:.1f} s against its floor (bare Ray job) {bare_s:.1f} s: "
          f"{plat_s - bare_s:+.1f} s, ratio {plat_s / bare_s:.2f}")  # fmt: skip
    print("where the platform's wall time went (last repeat), seconds per run state:")
    last = pairs[-1][0]
    for name, seconds in last.states.items():
        print(f"  {name:<40}{seconds:8.1f}")
    print(f"  {'(the bare job, submit to SUCCEEDED)':<40}{pairs[-1][1].wall_s:8.1f}")
    answers = " + ".join(f"{stage} answers {s:.1f} s" for stage, s in last.answers.items())
    print(
        f"in the Ray job: training {last.train_s:.1f} s, {answers or 'no answer evaluation logged'}; the rest is "
        "the job's start (driver, Ray Train's workers, imports), the eval-loss passes, saving and uploading"
    )


def measure(repeats: int, steps: int) -> None:
    from bench.local_stack import temporary_stack
    from services.trainer import pipeline
    from tests.tiny_models import build_llama

    with tempfile.TemporaryDirectory(prefix="dst-bench-models-", dir="/tmp") as models:
        student = str(build_llama(Path(models) / "tiny-llama"))
        with temporary_stack(model_roots=str(Path(models).resolve())) as stack:
            client = stack.client()
            try:
                dataset_id = upload(client, ROWS)
                pairs = []
                for _ in range(repeats):
                    run, plat = platform_run(client, dataset_id, student, steps)
                    pairs.append((plat, bare_job(stack, run.id, stack.tenant_id, pipeline.RECIPES[run.path])))
            finally:
                client.close()
    report(pairs, steps)


def main(argv: list[str] | None = None) -> None:
    summary = __doc__.split("\n\n")[0]
    parser = argparse.ArgumentParser(prog="python -m bench.bench_platform_overhead", description=summary)
    parser.add_argument("--repeats", type=int, default=3, help="platform run + bare job pairs (default 3)")
    parser.add_argument("--steps", type=int, default=STEPS, help=f"training steps of the tiny run (default {STEPS})")
    args = parser.parse_args(argv if argv is not None else ([] if __name__ != "__main__" else None))
    measure(args.repeats, args.steps)


if __name__ == "__main__":
    main()
