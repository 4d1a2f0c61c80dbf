"""Pausing a run and resuming it: TRAINING -> PAUSED -> TRAINING, its allowance slot kept throughout.

- ``pause`` (PauseRun): only a TRAINING run. The run's training job learns it at its next progress push
  (``ReportRunEvents`` answers keep_going false: ``runs.job_may_go_on``), saves a checkpoint at the step
  it is at (``recipes/progress.py``: a stop asked by the service saves first), and ends, so its Ray job
  and its compute are free.
- ``hold`` drives a PAUSED run: it waits up to ``PAUSE_GRACE_S`` for the job to end by itself, else stops
  it (the run then goes on from its last periodic checkpoint), takes the job's S3 keys back, says where
  the run paused in a run event, and waits until the run is resumed or cancelled.
- ``resume`` (ResumeRun): only a PAUSED run. It moves to TRAINING with ``resume_pending``, and the
  pipeline's next training step submits a new job attempt; the job finds the run's checkpoints (the run
  id is its Ray Train run name) and goes on from the one the paused job saved, saying so in a run event
  (``resuming from the checkpoint at step N``). A resumed attempt is not a lost job: the limit on lost
  jobs counts attempts less pauses.

Cancelling a paused run works as for any run that is not final.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from psycopg_pool import AsyncConnectionPool

from distillery.trainer.v1 import trainer_pb2 as pb
from services.common.errors import FailedPrecondition
from services.trainer import ray_jobs, runs

PAUSE_GRACE_S = 120.0
POLL_S = 1.0


async def pause(pool: AsyncConnectionPool, tenant_id: str, run_id: str) -> runs.Run:
    run = await runs.get(pool, tenant_id, run_id)
    if run.state != pb.RUN_STATE_TRAINING:
        raise FailedPrecondition(
            f"run {run_id} is {runs.state_name(run.state)}: only a TRAINING run can be paused"
            + (" (resume it with `distillery runs resume`)" if run.state == pb.RUN_STATE_PAUSED else "")
        )
    return await runs.transition(pool, tenant_id, run_id, pb.RUN_STATE_PAUSED)


async def resume(pool: AsyncConnectionPool, tenant_id: str, run_id: str) -> runs.Run:
    run = await runs.get(pool, tenant_id, run_id)
    if run.state != pb.RUN_STATE_PAUSED:
        raise FailedPrecondition(f"run {run_id} is {runs.state_name(run.state)}: only a PAUSED run can be resumed")
    return await runs.transition(pool, tenant_id, run_id, pb.RUN_STATE_TRAINING, resumed=True)


async def running(jobs: ray_jobs.RayJobs, job: str) -> bool:
    state = await jobs.state(job) if job else None
    return state is not None and state.status not in ray_jobs.FINISHED


async def ended(
    pool: AsyncConnectionPool, jobs: ray_jobs.RayJobs, run: runs.Run, job: str,
    keep_waiting: Callable[[], Awaitable[bool]] | None = None,
) -> bool:  # fmt: skip
    """Wait for a paused job to save its checkpoint and end, up to ``PAUSE_GRACE_S``, then stop it; False when
    ``keep_waiting()`` (where given) said to stop waiting first."""
    deadline = time.monotonic() + PAUSE_GRACE_S
    while await running(jobs, job):
        if keep_waiting is not None and not await keep_waiting():
            return False
        if time.monotonic() > deadline:
            await jobs.stop(job)
            await runs.note(pool, run.id, f"the training job did not stop within {PAUSE_GRACE_S:.0f} s of the "
                            "pause; stopped it (the run goes on from its last periodic checkpoint)")  # fmt: skip
            return True
        await asyncio.sleep(POLL_S)
    return True


async def hold(
    pool: AsyncConnectionPool, jobs: ray_jobs.RayJobs, run: runs.Run, job: str,
    revoke: Callable[[runs.Run], Awaitable[None]],
) -> None:  # fmt: skip
    """Drive a PAUSED run until it is no longer paused (``job``: its last training job's id, "" for none)."""

    async def still_paused() -> bool:
        return (await runs.get(pool, run.tenant_id, run.id)).state == pb.RUN_STATE_PAUSED

    if await running(jobs, job):
        if not await ended(pool, jobs, run, job, still_paused):
            return  # resumed or cancelled meanwhile
        await revoke(run)
        step = (await runs.get(pool, run.tenant_id, run.id)).progress.get("step", 0)
        said = (f"paused after step {step}: the training job saved a checkpoint and stopped, its compute is free "
                f"and the allowance slot is kept; `distillery runs resume {run.id}` goes on from there")  # fmt: skip
        await runs.note_once(pool, run.id, said)  # once, even if a second driver of the run got here too
    while await still_paused():
        await asyncio.sleep(POLL_S)
