"""The GENERATING stage: a run's teacher job, made once and followed to its end.

distill-text   every input of the input-only dataset under every named system prompt;
               the generated pairs (a dataset ingest checked) are then split train/eval
distill-tools  tool-calling trajectories for the active tools from the seed prompts, each
               verified against the tools' schemas (rejected ones counted by reason); the
               verified ones (a tool-calls dataset) are then split train/eval
finetune-text  with augment_count, new pairs in the style of the train split (the eval
               rows are never shown to the teacher) added to the train split

The job is made with the run id as its idempotency key, so a restarted trainer finds
it again; its progress (rows, tokens, cost) goes to the run's events as it moves.

The pipeline owns the flow (``Pipeline.generate``): ``follow`` the job to its end, then split the
generated dataset or ``add_to_train``. These functions are given what they use (the pool, the
peers, the store) and import nothing of the pipeline.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from google.protobuf import json_format

from distillery.common.v1 import common_pb2
from distillery.teacher.v1 import teacher_pb2
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound
from services.common.objects import ObjectStore
from services.common.pairs import pair_key
from services.trainer import run_requests, runs
from services.trainer.peers import Peers
from services.trainer.runs import RunFailed

POLL_S = 1.0


def usage_of(job: teacher_pb2.GenerationJob) -> dict[str, Any]:
    return json_format.MessageToDict(
        job.usage, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


async def follow(pool: Any, peers: Peers, run: runs.Run) -> teacher_pb2.GenerationJob | None:
    """Make the run's teacher job (or find it again) and follow it to its end, reporting its progress and
    outcome; the finished job, or None when the run became final meanwhile."""
    generation = dict(run.generation or {})
    if not generation.get("job_id"):
        try:
            train_key = (run.split or {}).get("train_key", "")  # augmentation: new pairs like the train split's
            request = run_requests.teacher_request(run.path, run.request, run.id, train_key)
            job = await peers.create_job(run.tenant_id, request)
        except (InvalidArgument, FailedPrecondition, NotFound) as err:
            raise RunFailed("generation_refused", err.message, err.field or "teacher") from None
        estimate = job.estimate
        generation = {"job_id": job.id, "estimate": json_format.MessageToDict(estimate)}
        await runs.save(pool, run.id, generation=generation)
        await runs.note(pool, run.id, f"teacher {job.teacher}: job {job.id}, {estimate.rows} rows to generate; "
                        f"estimated {estimate.input_tokens:,} input and {estimate.output_tokens:,} output tokens, "
                        f"${estimate.estimated_cost_usd:.4f}")  # fmt: skip
    seen: tuple[int, ...] = ()
    while True:
        job = await peers.get_job(run.tenant_id, generation["job_id"])
        if (job.rows_done, job.rows_failed, job.state) != seen:
            seen = (job.rows_done, job.rows_failed, job.state)
            generation["usage"] = usage_of(job)
            await runs.save(pool, run.id, generation=generation)
            progress = {"rows_done": job.rows_done + job.rows_failed, "rows_total": job.rows_total,
                        "rows_failed": job.rows_failed, "usage": generation["usage"]}  # fmt: skip
            await runs.report(pool, run.id, [{"progress": progress}])
        if job.state == teacher_pb2.JOB_STATE_SUCCEEDED:
            break
        if job.state == teacher_pb2.JOB_STATE_FAILED:
            raise RunFailed("generation_failed", f"the teacher's job {job.id} failed: {job.error}", "teacher")
        if (await runs.get(pool, run.tenant_id, run.id)).state in runs.FINAL:
            return None
        if job.state == teacher_pb2.JOB_STATE_CANCELLED:
            raise RunFailed("generation_cancelled", f"the teacher's job {job.id} was cancelled outside the run")
        await asyncio.sleep(POLL_S)
    await _report_outcome(pool, run, job)
    return job


def splits_output(run: runs.Run) -> bool:
    """Whether the job's output is the run's whole dataset (split train/eval next), not pairs added to train."""
    return run.path in (common_pb2.TRAINING_PATH_DISTILL_TEXT, common_pb2.TRAINING_PATH_DISTILL_TOOLS)


async def _report_outcome(pool: Any, run: runs.Run, job: teacher_pb2.GenerationJob) -> None:
    usage = job.usage
    by_prompt = ", ".join(f"{name}: {n}" for name, n in sorted(job.rows_by_prompt.items()))
    lines = [f"the teacher wrote {job.rows_done} of {job.rows_total} rows{f' ({by_prompt})' * bool(by_prompt)}; "
             f"{usage.input_tokens:,} input and {usage.output_tokens:,} output tokens in {usage.requests} requests, "
             f"${usage.estimated_cost_usd:.4f}{'' if usage.billed else ' (your own key: not billed)'}"]  # fmt: skip
    if job.rows_failed:
        lines.append(f"skipped {job.rows_failed} rows the teacher could not answer "
                     f"(under the limit of failed rows); the first:")  # fmt: skip
        lines += [f"  row {f.row} {f.prompt_name}: {f.code}: {f.message}" for f in job.failures[:5]]
    if job.rows_rejected:
        reasons = ", ".join(f"{reason}: {n}" for reason, n in sorted(job.rejected_by_reason.items()))
        lines.append(f"rejected {job.rows_rejected} trajectories that failed verification ({reasons})")
    if job.rows_duplicate:
        lines.append(f"dropped {job.rows_duplicate} generated pairs that repeated another pair")
    for line in lines:
        await runs.note(pool, run.id, line)
    teacher_metrics = {"teacher_rows": float(job.rows_done), "teacher_rows_failed": float(job.rows_failed),
                       "teacher_rows_rejected": float(job.rows_rejected)}  # fmt: skip
    await runs.save(pool, run.id, metrics={**run.metrics, **teacher_metrics})


async def add_to_train(pool: Any, store: ObjectStore, run: runs.Run, job: teacher_pb2.GenerationJob) -> None:
    """The train split plus the new pairs, as the run's own train file. A new pair that repeats an
    eval row is dropped: it would put the eval set into training."""
    split = dict(run.split or {})
    original, eval_rows, generated = [
        await asyncio.to_thread(store.get_bytes, key) for key in (split["train_key"], split["eval_key"], job.output_key)
    ]
    held_out = {pair_key(orjson.loads(line)["messages"]) for line in eval_rows.splitlines() if line}
    new_rows = [orjson.loads(line)["messages"] for line in generated.splitlines() if line]
    kept = [orjson.dumps({"messages": m}) for m in new_rows if pair_key(m) not in held_out]
    key = f"{runs.run_prefix(run)}/train_augmented.jsonl"
    merged = original.rstrip(b"\n") + b"\n" + b"\n".join(kept) + b"\n" if kept else original
    await asyncio.to_thread(store.put_bytes, key, merged, "application/jsonl")
    before = split["train_rows"]
    split.update(train_key=key, train_rows=before + len(kept), augmented_rows=len(kept))
    await runs.save(pool, run.id, split=split)
    if len(kept) < len(new_rows):
        await runs.note(pool, run.id, f"dropped {len(new_rows) - len(kept)} generated pairs that repeat an eval row")
    await runs.note(pool, run.id, f"added {len(kept)} teacher-written pairs to the {before} train rows "
                   f"(eval rows untouched): {split['train_rows']} train rows")  # fmt: skip
