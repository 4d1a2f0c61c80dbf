"""The stages of one run, from QUEUED to a final state, each step persisted first.

    QUEUED -> VALIDATING   the dataset (and eval dataset) checked; ingest splits train/eval
                           (distill-text: after generation, the generated pairs)
    -> (sizing)            a recipe's auto settings sized from the final split, before TRAINING
                           (``run_recipes``: at the end of VALIDATING, or of GENERATING for a run
                           that generates), and written on the run's request
    -> (rubric)            a run with a rubric: checked on the eval set with the base student's
                           answers, refused or recorded (``rubric_runs``); a validate-only run ends here
    VALIDATING -> GENERATING (distill-text; finetune-text with augmentation) a teacher job
                           made (idempotent per run) and followed, its progress reported;
                           distill-text then splits the generated pairs, augmentation
                           adds the new pairs to the train split (never to eval)
    -> TRAINING            the recipe submitted as a Ray job; its state polled until it ends
    TRAINING <-> PAUSED    PauseRun / ResumeRun (``pauses``): the job checkpoints and ends; a new one goes on
    TRAINING -> EVALUATING the job's result read from S3 and checked (finite eval loss)
    EVALUATING -> REGISTERING -> SUCCEEDED   the model registered, committing the quota slot

A job gets only what its run needs (``job_access``): S3 keys scoped to its inputs and its run's prefix
(taken back when the job ends) and a push token for its run; both reach it through its secrets object,
never its environment or command line, which Ray writes into its logs.

The stages are driven here; ``generation`` holds the GENERATING stage's steps and imports
nothing of this module. The Ray job gets one typed ``JobSpec`` (``recipes/job_spec.py``) as
its spec.json, and runs the recipe module of the run's path (``RECIPES``).

Any stage may end the run FAILED (``RunFailed``: a code, a message a user can act on,
the field at fault). Every stage can run again after a restart: the split is
idempotent, a submitted job is found again by its id, registration is idempotent per
run. ``Supervisor`` decides which runs this instance drives; this module only drives.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import shlex
import sys
from dataclasses import dataclass
from typing import Any

import psycopg
from minio.error import S3Error
from psycopg.types.json import Jsonb

from distillery.common.v1 import common_pb2
from distillery.registry.v1 import registry_pb2
from distillery.trainer.v1 import trainer_pb2 as pb
from services.common.errors import DistilleryError, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from services.common.objects import ObjectStore
from services.common.settings import S3Settings
from services.trainer import generation, job_access, pauses, ray_jobs, run_inputs, run_recipes, run_requests, runs
from services.trainer.peers import Peers
from services.trainer.recipes.grpo_settings import GrpoSettings
from services.trainer.recipes.job_spec import JobSpec
from services.trainer.recipes.sft_settings import SftSettings
from services.trainer.rubric_runs import check as check_rubric
from services.trainer.runs import RunFailed, run_prefix

log = logging.getLogger("distillery.trainer.pipeline")

POLL_S = 1.0
RETRY_S = 2.0
MAX_JOB_ATTEMPTS = 3
VIOLATIONS_IN_ERROR = 10
ARTIFACT_KINDS = {
    "lora_adapter": registry_pb2.ARTIFACT_KIND_LORA_ADAPTER,
    "full_weights": registry_pb2.ARTIFACT_KIND_FULL_WEIGHTS,
}
# The recipe each path's Ray job runs: ``python -m <module> --spec-key <key>``. A new path's recipe is one
# new module here (it reads a JobSpec and builds on recipes/job.py).
RECIPES = {
    common_pb2.TRAINING_PATH_FINETUNE_TEXT: "services.trainer.recipes.sft",
    common_pb2.TRAINING_PATH_DISTILL_TEXT: "services.trainer.recipes.sft",
    common_pb2.TRAINING_PATH_DISTILL_TOOLS: "services.trainer.recipes.tool_calling",
    common_pb2.TRAINING_PATH_FINETUNE_ASR: "services.trainer.recipes.speech",
    common_pb2.TRAINING_PATH_FINETUNE_OCR: "services.trainer.recipes.ocr",
}
# The metric after training a run's result must hold as a number (else the training diverged), by path.
CHECKED_AFTER = {common_pb2.TRAINING_PATH_FINETUNE_ASR: "wer_after", common_pb2.TRAINING_PATH_FINETUNE_OCR: "cer_after"}
# Environment of every training job: what ENVIRONMENT.md measured to help.
JOB_TUNING = {
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    "RAY_JOB_STOP_SIGNAL": "SIGINT",
    "PYTHONUNBUFFERED": "1",
}


def job_id(run: runs.Run, attempt: int) -> str:
    return f"{run.id}-{attempt}"


def numbers(result: dict[str, Any]) -> dict[str, float]:
    """The numeric metrics of a job's result.json."""
    return {k: float(v) for k, v in result.get("metrics", {}).items() if isinstance(v, int | float)}


def job_spec(run: runs.Run, workers: int, use_gpu: bool) -> JobSpec:
    """The spec of the run's training job: its split, its output prefix, its resolved settings, the workers."""
    request, split = run.request, run.split or {}
    grpo, source = request.get("grpo"), request.get("student_source") or {}
    return JobSpec(
        run_id=run.id, tenant_id=run.tenant_id, student_model=base_model(run),
        train_key=split["train_key"], eval_key=split["eval_key"], output_prefix=run_prefix(run),
        sft=SftSettings(**request["sft"]), grpo=GrpoSettings(**grpo) if grpo is not None else None,
        num_workers=workers, use_gpu=use_gpu, **run_recipes.job_resources(request),
        start_from=source.get("artifact_prefix", ""), start_kind=source.get("artifact_kind", ""),
        rubric=(run.rubric_validation or {}).get("definition"),  # the rubric the run checked (``rubric_runs``)
        language=request.get("language", ""), train_vision=bool(request.get("train_vision", False)),
        image_mode=request.get("image_mode", ""),
    )  # fmt: skip


def base_model(run: runs.Run) -> str:
    """The model the run's weights grow from: its student, or the base of the registered model it continues."""
    return str((run.request.get("student_source") or {}).get("base_model") or run.request["student_model"])


@dataclass
class Pipeline:
    pool: Any
    store: ObjectStore
    s3: S3Settings
    peers: Peers
    jobs: ray_jobs.RayJobs
    train_workers: int = 1
    train_use_gpu: bool = False
    worker_groups: tuple[run_recipes.WorkerGroup, ...] = ()  # what jobs may get (``worker_groups``)
    push_address: str = ""
    access: job_access.JobAccess = None  # type: ignore[assignment]  # default: built from store and s3

    def __post_init__(self) -> None:
        if self.access is None:
            self.access = job_access.JobAccess(self.store, self.s3)

    def deployment(self) -> run_recipes.Deployment:
        """What this deployment gives a training job: its worker groups."""
        return run_recipes.Deployment(self.train_workers, self.train_use_gpu, self.worker_groups)

    # --- driving ---

    async def drive(self, run_id: str, tenant_id: str) -> None:
        """Take the run through its stages until it is final."""
        while True:
            run = await runs.get(self.pool, tenant_id, run_id)
            if run.state in runs.FINAL:
                return
            try:
                await self.step(run)
            except RunFailed as failure:
                await self.fail(run, failure.error)
            except FailedPrecondition:
                continue  # cancelled meanwhile: the next look finds it final
            except (Unavailable, psycopg.OperationalError) as err:
                log.warning("run %s waits for a dependency: %s", run_id, err)
                await asyncio.sleep(RETRY_S)
            except DistilleryError as err:
                await self.fail(run, {"code": "internal_error", "message": err.message, "field": err.field})
            except Exception:
                log.exception("run %s stopped by an internal error", run_id)
                await self.fail(run, {"code": "internal_error", "message": "an internal error stopped the run; "
                                      "see the trainer service's log"})  # fmt: skip

    async def step(self, run: runs.Run) -> None:
        if run.state == pb.RUN_STATE_QUEUED:
            await runs.transition(self.pool, run.tenant_id, run.id, pb.RUN_STATE_VALIDATING)
        elif run.state == pb.RUN_STATE_VALIDATING:
            await run_inputs.validate(self.pool, self.peers, run)
            generates = run_requests.generates(run.path, run.request)
            if not generates and not await self.ready_to_train(run):
                return  # a validate-only run, done
            next_state = pb.RUN_STATE_GENERATING if generates else pb.RUN_STATE_TRAINING
            await runs.transition(self.pool, run.tenant_id, run.id, next_state)
        elif run.state == pb.RUN_STATE_GENERATING:
            if await self.generate(run) and await self.ready_to_train(run):
                await runs.transition(self.pool, run.tenant_id, run.id, pb.RUN_STATE_TRAINING)
        elif run.state == pb.RUN_STATE_TRAINING:
            if await self.train(run):
                await runs.transition(self.pool, run.tenant_id, run.id, pb.RUN_STATE_EVALUATING)
        elif run.state == pb.RUN_STATE_EVALUATING:
            await self.evaluate(run)
            await runs.transition(self.pool, run.tenant_id, run.id, pb.RUN_STATE_REGISTERING)
        elif run.state == pb.RUN_STATE_PAUSED:
            await pauses.hold(self.pool, self.jobs, run, job_id(run, run.job_attempt) if run.job_attempt else "",
                              self.revoke)  # fmt: skip
        elif run.state == pb.RUN_STATE_REGISTERING:
            await self.register(run)
            await runs.transition(self.pool, run.tenant_id, run.id, pb.RUN_STATE_SUCCEEDED)
        else:
            raise RunFailed("internal_error", f"this trainer cannot drive a run in state {runs.state_name(run.state)}")

    # --- stages ---

    async def generate(self, run: runs.Run) -> bool:
        """Follow the run's teacher job to its end; True when the pairs are ready to train on."""
        job = await generation.follow(self.pool, self.peers, run)
        if job is None:
            return False  # the run became final meanwhile
        if generation.splits_output(run):
            await run_inputs.split(self.pool, self.peers, run, job.output_dataset_id)
        else:
            await generation.add_to_train(self.pool, self.store, run, job)
        return True

    async def ready_to_train(self, run: runs.Run) -> bool:
        """Size the run's auto settings, then check its rubric (``rubric_runs``); False when the run ended there."""
        await self.size(run)
        return await check_rubric(self, run, job_spec)

    async def size(self, run: runs.Run) -> None:
        """Size the run's auto settings from its final split (``run_recipes``), once: the sized values replace
        them in the run's request, which ``GetRun`` shows, and a note says what they were sized from."""
        run = await runs.get(self.pool, run.tenant_id, run.id)  # with the split this stage saved
        if not run.request.get("auto_fields") or "sized" in run.request or not run.split:
            return
        workers, _ = run_recipes.job_compute(run.request, self.deployment())
        measured = await asyncio.to_thread(run_recipes.measure, self.store, run.split)
        try:
            request = run_recipes.size_request(run.request, measured, workers)
        except InvalidArgument as err:
            raise RunFailed("invalid_settings", f"the sized settings are refused: {err.message}", err.field) from None
        async with self.pool.connection() as conn:  # only while the run is still where it was sized
            await conn.execute(
                "UPDATE runs SET request = %s, updated_at = now() WHERE id = %s AND state = %s",
                (Jsonb(request), run.id, run.state),
            )
        values = ", ".join(f"{name} {request['sft'][name]}" for name in request["auto_fields"])
        media = run.path in run_inputs.MEDIA_KINDS  # its rows are clips or images, not tokens
        longest = f", the longest about {measured.longest_tokens} tokens" * (not media)
        await self.note(run, f"sized from the split ({measured.train_rows} train rows{longest}): {values}")

    async def train(self, run: runs.Run) -> bool:
        """Submit the run's Ray job (or find it again) and wait for it; True when it succeeded."""
        attempt = run.job_attempt
        if run.resume_pending and attempt:  # the paused job may still be saving its checkpoint: let it end first
            await pauses.ended(self.pool, self.jobs, run, job_id(run, attempt))
        current = await self.jobs.state(job_id(run, attempt)) if attempt and not run.resume_pending else None
        if current is None:
            if attempt - run.pauses >= MAX_JOB_ATTEMPTS:
                raise RunFailed("training_lost", f"the training job was lost {attempt} times (is the Ray cluster "
                                "being replaced?); create the run again")  # fmt: skip
            attempt = await self.submit(run, attempt + 1)  # after a pause: a job that goes on from its checkpoint
        while True:
            if (await runs.get(self.pool, run.tenant_id, run.id)).state != pb.RUN_STATE_TRAINING:
                return False  # final, or paused: the job stops at its next push
            state = await self.jobs.state(job_id(run, attempt))
            if state is None:
                return False  # the job vanished: the next step submits it again
            if state.status in ray_jobs.FINISHED:
                await self.revoke(run)
            if state.status == ray_jobs.SUCCEEDED:
                return True
            if state.status == ray_jobs.FAILED:
                raise await self._job_failure(run, state)
            if state.status == ray_jobs.STOPPED:
                if (await runs.get(self.pool, run.tenant_id, run.id)).state == pb.RUN_STATE_TRAINING:
                    raise RunFailed("training_stopped", "the training job was stopped outside Distillery")
                return False
            await asyncio.sleep(POLL_S)

    async def submit(self, run: runs.Run, attempt: int) -> int:
        """Write the job's spec and secrets, then submit it; no secret goes in its environment or command line
        except the short-lived URL of its secrets object (``job_access``)."""
        prefix = run_prefix(run)
        spec_key = f"{prefix}/spec.json"
        spec = job_spec(run, *run_recipes.job_compute(run.request, self.deployment()))
        await asyncio.to_thread(self.store.put_bytes, spec_key, spec.to_json().encode(), "application/json")
        await asyncio.to_thread(self.store.delete_prefix, f"{prefix}/error.json")
        inputs = spec.inputs()
        if run.path in run_inputs.MEDIA_KEYS:  # and the uploads its split's rows name (clips, image ZIPs)
            inputs += await asyncio.to_thread(run_inputs.media_keys, self.store, run)
        secrets, secrets_url = await asyncio.to_thread(self.access.issue, run, prefix, inputs)
        await runs.save(
            self.pool, run.id, job_attempt=attempt, push_token_hash=job_access.hash_token(secrets.push_token),
            resume_pending=False,
        )  # fmt: skip
        env = self.job_env(run)
        recipe = RECIPES[common_pb2.TrainingPath.ValueType(run.path)]
        entrypoint = (
            f"{shlex.quote(sys.executable)} -m {recipe} --spec-key {shlex.quote(spec_key)}"
            f" --secrets-url {shlex.quote(secrets_url)}"
        )
        await self.jobs.submit(job_id(run, attempt), entrypoint, env)
        scope = "S3 keys scoped to the run" if self.access.scoped() else "the trainer's shared S3 key"
        await self.note(run, f"submitted Ray job {job_id(run, attempt)} ({scope})")
        return attempt

    def job_env(self, run: runs.Run) -> dict[str, str]:
        """The environment of the run's Ray jobs: no secret (those reach a job through its secrets object)."""
        return {
            **JOB_TUNING,
            "DISTILLERY_S3_ENDPOINT": self.s3.endpoint, "DISTILLERY_S3_BUCKET": self.s3.bucket,
            "DISTILLERY_S3_SECURE": str(self.s3.secure).lower(), "DISTILLERY_S3_REGION": self.s3.region,
            "DISTILLERY_TRAINER_ADDRESS": self.push_address,
            "HF_HOME": job_access.cache_dir(self.access.cache_root, run.tenant_id),
        }  # fmt: skip

    async def revoke(self, run: runs.Run) -> None:
        """Take back the job's S3 keys (its job ended, or the run did); best effort, logged."""
        try:
            await asyncio.to_thread(self.access.revoke, run, run_prefix(run))
        except (Unavailable, S3Error, OSError) as err:
            log.warning("cannot revoke the S3 keys of run %s's job: %s", run.id, err)

    async def _job_failure(self, run: runs.Run, state: ray_jobs.JobState) -> RunFailed:
        """What the recipe said went wrong (error.json), else Ray's own message."""
        error = await self._read_json(f"{run_prefix(run)}/error.json")
        if error is not None:
            return RunFailed(error.get("code", "training_failed"), error.get("message", ""), error.get("field", ""))
        return RunFailed(
            "training_failed",
            f"the training job failed: {state.message.strip()[-500:]} (see `distillery runs logs {run.id}`)",
        )

    async def evaluate(self, run: runs.Run) -> None:
        result = await self._read_json(f"{run_prefix(run)}/result.json")
        if result is None:
            raise RunFailed("training_failed", "the training job ended without writing its result")
        metrics = numbers(result)
        checked = CHECKED_AFTER.get(common_pb2.TrainingPath.ValueType(run.path), "eval_loss_after")
        if not math.isfinite(metrics.get(checked, math.nan)):
            raise RunFailed("training_diverged", f"{checked} is not a number: the training diverged. Lower "
                            "sft.learning_rate and try again", "sft.learning_rate")  # fmt: skip
        await runs.save(self.pool, run.id, result=result, metrics={**run.metrics, **metrics})
        config = result.get("training_config") or {}
        if oversized := config.get("oversized_clips"):  # a speech run's clips over Whisper's 30 s window
            await self.note(run, f"left out {len(oversized)} clip(s) over 30 s (Whisper's window): "
                            f"{', '.join(map(str, oversized[:20]))}{' ...' * (len(oversized) > 20)}")  # fmt: skip
        if too_long := int(config.get("train_rows_too_long", 0)) + int(config.get("eval_rows_too_long", 0)):
            await self.note(run, f"left out {too_long} row(s) whose transcript is over Whisper's 448 tokens")
        await runs.report(self.pool, run.id, [{"metrics": {"step": int(metrics.get("steps", 0)), "values": metrics}}])

    async def _read_json(self, key: str) -> dict[str, Any] | None:
        """An object the training job wrote, or None when it wrote none."""
        try:
            data = await asyncio.to_thread(self.store.get_bytes, key)
        except S3Error as err:
            if err.code == "NoSuchKey":
                return None
            raise Unavailable(f"cannot read {key} from S3 ({err.code})") from None
        found = json.loads(data)
        return found if isinstance(found, dict) else None

    async def register(self, run: runs.Run) -> None:
        result = run.result or {}
        model = {
            "run_id": run.id, "name": run.request.get("model_name") or run.id,
            "path": run.path, "base_model": base_model(run),
            "artifact_kind": ARTIFACT_KINDS.get(result.get("artifact_kind", ""), 0),
            "artifact_uri": result.get("artifact_uri", ""),
            "metrics": numbers(result), "tools_json": list(result.get("tools_json") or []),
        }  # fmt: skip
        config = {**result.get("training_config", {}), **run_inputs.made_from(run)}
        model_id = await self.peers.register(run.tenant_id, model, config)
        await runs.save(self.pool, run.id, model_id=model_id)

    # --- endings ---

    async def fail(self, run: runs.Run, error: dict[str, Any]) -> None:
        try:
            await runs.transition(self.pool, run.tenant_id, run.id, pb.RUN_STATE_FAILED, error)
        except FailedPrecondition:
            return  # already final
        log.info("run %s failed: %s", run.id, error.get("code"))
        await self.wind_down(run)

    async def cancel(self, tenant_id: str, run_id: str) -> runs.Run:
        cancelled = await runs.transition(self.pool, tenant_id, run_id, pb.RUN_STATE_CANCELLED)
        await self.wind_down(cancelled)
        return cancelled

    async def wind_down(self, run: runs.Run) -> None:
        """Stop the run's generation and training jobs and give its quota slot back; each best effort, logged."""
        if generation_job := (run.generation or {}).get("job_id"):
            try:
                await self.peers.cancel_job(run.tenant_id, generation_job)
            except DistilleryError as err:
                log.warning("cannot cancel the generation job of run %s: %s", run.id, err.message)
        if run.job_attempt:
            try:
                await self.jobs.stop(job_id(run, run.job_attempt))
            except Unavailable as err:
                log.warning("cannot stop the job of run %s: %s (it stops at its next push)", run.id, err.message)
            await self.revoke(run)
        try:
            await self.peers.release(run.tenant_id, run.id)
        except NotFound:
            pass  # it never held one
        except DistilleryError as err:
            log.error("cannot release the quota slot of run %s: %s", run.id, err.message)

    async def note(self, run: runs.Run, text: str) -> None:
        await runs.note(self.pool, run.id, text)
