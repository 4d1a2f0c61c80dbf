"""A run with a rubric: the rubric named at creation, and validated on the eval set before any training.

At ``CreateRun`` (``resolve``) the rubric named by id or name is looked up for the tenant (NOT_FOUND
naming ``rubric`` when it has none) and the run keeps its id: the version it was created with, whatever
versions come later.

Before TRAINING (``check``, from the pipeline once the run has its final split, and its auto settings
sized), the rubric is checked on the first rows of the run's eval split:

0. every programmatic criterion scores the references: one that cannot (a ``numeric`` criterion on references
   with no number...) refuses the run at once, before any compute (``rubric_checks.reference_refusal``);
1. the base student's answers to those prompts: the trainer service runs no model, so a short Ray job does
   (``recipes/base_answers.py``, job ``<run>-rubric``, its objects under ``<run prefix>/rubric/``, S3 keys
   scoped to the run as a training job's are), followed until it ends; a job that already wrote its answers
   (a restarted trainer) is not run again;
2. ``rubric_checks.report`` scores the eval references and those answers on every criterion (judge criteria
   through the teacher: its limits, the tenant's key or the platform's, and usage accounting);
3. the report is kept on the run (``Run.rubric_validation``) and summed up in a run event, with the rubric's
   definition, which the training job gets (``JobSpec.rubric``: its mid-training evals score by the rubric);
4. a criterion that cannot score a row, or gives no spread, fails the run with code ``rubric_invalid``, its
   field ``rubric.criteria[i]`` and a message naming the criterion;
5. a validate-only run (``validate_only``) then ends SUCCEEDED with no model, its allowance slot released;
   any other run goes on to TRAINING.

A run without a rubric is untouched: ``check`` returns at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import shlex
import sys
from collections.abc import Callable
from functools import partial
from typing import Any, Protocol

from minio.error import S3Error

from distillery.common.v1 import common_pb2
from distillery.trainer.v1 import trainer_pb2 as pb
from services.common.errors import DistilleryError, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from services.common.objects import ObjectStore
from services.trainer import job_access, ray_jobs, rubric_checks, rubric_store, run_recipes, runs
from services.trainer.graders import Row
from services.trainer.peers import Peers
from services.trainer.ray_jobs import RayJobs
from services.trainer.recipes.job_spec import JobSpec
from services.trainer.runs import RunFailed, run_prefix

log = logging.getLogger("distillery.trainer.rubric_runs")

MODULE = "services.trainer.recipes.base_answers"
POLL_S = 1.0
TEXT_PATHS = (common_pb2.TRAINING_PATH_FINETUNE_TEXT, common_pb2.TRAINING_PATH_DISTILL_TEXT)


class Stage(Protocol):
    """What ``check`` uses of the pipeline."""

    pool: Any
    store: ObjectStore
    peers: Peers
    jobs: RayJobs
    access: job_access.JobAccess

    def deployment(self) -> run_recipes.Deployment: ...

    def job_env(self, run: runs.Run) -> dict[str, str]: ...

    async def note(self, run: runs.Run, text: str) -> None: ...


def check_request(request: pb.CreateRunRequest, path: int) -> None:
    """A run request's rubric fields, before anything is stored: text paths only; validate_only needs a rubric."""
    if request.validate_only and not request.rubric:
        raise InvalidArgument("validate_only checks a rubric before training: give the rubric (--rubric NAME)",
                              field="validate_only")  # fmt: skip
    if request.rubric and path not in TEXT_PATHS:
        raise InvalidArgument("a rubric scores text answers: finetune-text and distill-text runs take one; a "
                              "distill-tools run is scored by its call rates", field="rubric")  # fmt: skip


async def resolve(pool: Any, tenant_id: str, stored: dict[str, Any]) -> None:
    """The run's rubric by id: ``stored["rubric"]`` (an id or a name) becomes the id of the version it names."""
    if stored.get("rubric"):
        stored["rubric"] = (await rubric_store.get(pool, tenant_id, stored["rubric"])).id


def folder(run: runs.Run) -> str:
    return f"{run_prefix(run)}/rubric"


def job_id(run: runs.Run) -> str:
    return f"{run.id}-rubric"


async def check(stage: Stage, run: runs.Run, spec_of: Callable[[runs.Run, int, bool], JobSpec]) -> bool:
    """The module docstring's steps 1-5; True when the run goes on to TRAINING, False when it ended here.
    ``spec_of`` builds the run's job spec (``pipeline.job_spec``)."""
    if not run.request.get("rubric"):
        return True
    run = await runs.get(stage.pool, run.tenant_id, run.id)  # with its split and sized settings
    shown = run.rubric_validation
    if shown is None:
        stored = await rubric_store.get(stage.pool, run.tenant_id, run.request["rubric"])
        refused = rubric_checks.reference_refusal(stored, await _eval_rows(stage, run, rubric_checks.DEFAULT_ROWS))
        if refused is not None:  # before any compute: a criterion that cannot score the references
            raise RunFailed("rubric_invalid", refused.message, refused.field)
        answered = await _base_answers(stage, run, spec_of)
        if answered is None:
            return False  # the run became final meanwhile
        shown = await _report(stage, run, answered)
    if (refused := rubric_checks.refusal(shown)) is not None:
        raise RunFailed("rubric_invalid", refused.message, refused.field)
    if not run.request.get("validate_only"):
        return True
    try:
        await runs.transition(stage.pool, run.tenant_id, run.id, pb.RUN_STATE_SUCCEEDED)
    except FailedPrecondition:
        return False  # cancelled meanwhile
    try:
        await stage.peers.release(run.tenant_id, run.id)
    except NotFound:
        pass
    except DistilleryError as err:  # the registry's sweep gives an uncommitted slot back in time
        await stage.note(run, f"cannot release the allowance slot yet: {err.message}")
    return False


async def _report(stage: Stage, run: runs.Run, answered: dict[str, Any]) -> dict[str, Any]:
    """Score the eval references and the base answers; the report kept on the run, and an event."""
    stored = await rubric_store.get(stage.pool, run.tenant_id, run.request["rubric"])
    answers = [str(a) for a in answered.get("answers") or []]
    rows = await _eval_rows(stage, run, len(answers))
    if not answers or [r.reference for r in rows] != [str(r) for r in answered.get("references") or []]:
        raise RunFailed("internal_error", "the base answers do not match the eval split's rows; create the run again")
    student = run.request.get("student_model", "")
    shown = await rubric_checks.report(
        stored, rows, answers, partial(stage.peers.judge, run.tenant_id), f"the base student {student}"
    )
    shown["definition"] = stored.rubric  # what the training job's evals score with (``JobSpec.rubric``)
    await runs.save(stage.pool, run.id, rubric_validation=shown)
    await stage.note(run, rubric_checks.summary(shown))
    return shown


async def _eval_rows(stage: Stage, run: runs.Run, limit: int) -> list[Row]:
    """The first ``limit`` rows of the run's eval split."""
    try:
        text = (await asyncio.to_thread(stage.store.get_bytes, (run.split or {})["eval_key"])).decode("utf-8")
        return rubric_checks.rows_of(text, limit, "eval split", "eval_dataset_id")
    except InvalidArgument as err:
        raise RunFailed("invalid_dataset", err.message, err.field) from None
    except S3Error as err:
        raise Unavailable(f"cannot read the eval split ({err.code})") from None


async def _base_answers(
    stage: Stage, run: runs.Run, spec_of: Callable[[runs.Run, int, bool], JobSpec]
) -> dict[str, Any] | None:
    """The base answers job's result.json: read if it is there, else the job submitted (or found) and followed."""
    result_key = f"{folder(run)}/result.json"
    if (done := await _read_json(stage.store, result_key)) is not None:
        return done
    state = await stage.jobs.state(job_id(run))
    if state is None:
        await _submit(stage, run, spec_of)
    while True:
        if (await runs.get(stage.pool, run.tenant_id, run.id)).state in runs.FINAL:
            await stage.jobs.stop(job_id(run))
            await _revoke(stage, run)
            return None
        state = await stage.jobs.state(job_id(run))
        if state is None:
            raise Unavailable("the rubric's base answers job vanished (the Ray cluster was replaced?); trying again")
        if state.status in ray_jobs.FINISHED:
            await _revoke(stage, run)
        if state.status == ray_jobs.SUCCEEDED:
            if (done := await _read_json(stage.store, result_key)) is None:
                raise RunFailed("training_failed", "the base answers job ended without writing its answers")
            return done
        if state.status in (ray_jobs.FAILED, ray_jobs.STOPPED):
            error = await _read_json(stage.store, f"{folder(run)}/error.json") or {}
            why = error.get("message") or state.message.strip()[-500:] or f"it was {state.status.lower()}"
            raise RunFailed(error.get("code", "training_failed"), f"the base student could not answer the eval "
                            f"prompts for the rubric check: {why}", error.get("field", ""))  # fmt: skip
        await asyncio.sleep(POLL_S)


async def _submit(stage: Stage, run: runs.Run, spec_of: Callable[[runs.Run, int, bool], JobSpec]) -> None:
    """The base answers job: the run's spec with the rubric folder as its output, keys scoped to the run."""
    prefix = folder(run)
    spec = dataclasses.replace(spec_of(run, *run_recipes.job_compute(run.request, stage.deployment())),
                               output_prefix=prefix)  # fmt: skip
    spec_key = f"{prefix}/spec.json"
    await asyncio.to_thread(stage.store.put_bytes, spec_key, spec.to_json().encode(), "application/json")
    await asyncio.to_thread(stage.store.delete_prefix, f"{prefix}/error.json")
    _, secrets_url = await asyncio.to_thread(stage.access.issue, run, prefix, spec.inputs())
    entrypoint = (f"{shlex.quote(sys.executable)} -m {MODULE} --spec-key {shlex.quote(spec_key)} "
                  f"--secrets-url {shlex.quote(secrets_url)}")  # fmt: skip
    await stage.jobs.submit(job_id(run), entrypoint, stage.job_env(run))
    await stage.note(run, f"checking rubric {run.request['rubric']}: Ray job {job_id(run)} asks the base student "
                     "the first eval prompts")  # fmt: skip


async def _revoke(stage: Stage, run: runs.Run) -> None:
    try:
        await asyncio.to_thread(stage.access.revoke, run, folder(run))
    except (Unavailable, S3Error, OSError) as err:  # best effort, as a training job's
        log.warning("cannot revoke the S3 keys of run %s's base answers job: %s", run.id, err)


async def _read_json(store: ObjectStore, key: str) -> dict[str, Any] | None:
    try:
        data = await asyncio.to_thread(store.get_bytes, key)
    except S3Error as err:
        if err.code in ("NoSuchKey", "NoSuchObject"):
            return None
        raise Unavailable(f"cannot read {key} ({err.code})") from None
    found = json.loads(data)
    return found if isinstance(found, dict) else None
