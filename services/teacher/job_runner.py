"""Creates generation jobs and drives them to a final state, resuming after a restart.

Every active job has a lease (owner, until). This instance drives the jobs it holds
and renews their leases every ``lease_s``; every ``lease_s`` it also takes active
jobs whose lease lapsed: new ones, and those of an instance that stopped or died. A
driven job asks the provider only for rows not stored yet, through the generation
engine with the provider's shared limiter, stores each row as it finishes, then:

    too many failed rows (over max_failed_fraction)  -> FAILED, naming the first failures;
                 checked as each row is stored: once the limit is passed no row can save the
                 job, so it stops there (no other row asked, those in flight cancelled)
    otherwise -> the rows (tagged with their prompt name) written to the object store
                 and uploaded to ingest as a pairs dataset -> SUCCEEDED

A tool-trajectory job (``tool_jobs``) first writes its prompts, once (stored with the
job as its plan), then walks its trajectories as the engine's rows, each request of a
walk through the provider's limiter; the engine's own limiter only bounds how many walk
at once. Its verified trajectories become a tool-calls dataset; rejected ones stay in
its rows with their reasons, and do not count toward max_failed_fraction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import orjson

from distillery.teacher.v1 import teacher_pb2 as pb
from services.common.errors import DistilleryError, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from services.common.objects import ObjectStore, tenant_key
from services.teacher import job_requests, jobs, text_jobs, tool_jobs, tool_prompts, trajectory_rows
from services.teacher.engine import JobStopped, Outcome, Task, TooManyFailures, generate
from services.teacher.ingest_peer import Ingest
from services.teacher.keys import KeyStore
from services.teacher.limits import Limiter
from services.teacher.providers import PROVIDERS, split_teacher
from services.teacher.providers.base import Completion, Request
from services.teacher.settings import Settings

log = logging.getLogger("distillery.teacher.jobs")

Rows = list[list[dict[str, Any]]]
Call = Callable[[Request], Awaitable[Completion]]


def failure_summary(tally: jobs.Tally) -> str:
    """Failed rows by reason, most frequent first: count, code, the first rows, one message."""
    parts = []
    for code, count in tally.failed_by_code.items():
        examples = [f for f in tally.failures if f.code == code]
        rows = ", ".join(str(f.row) for f in examples[:5]) + (", ..." if count > 5 else "")
        message = f": {examples[0].message}" if examples else ""
        parts.append(f"{count} {code} (rows {rows}){message}")
    return "; ".join(parts)


class FailureBudget:
    """A job's failed rows against its limit (more than ``max_failed_fraction`` of its rows fails it),
    counted as its rows are stored: ``count`` raises ``TooManyFailures`` once the limit is passed."""

    def __init__(self, limit: float, rows_total: int, failed: int) -> None:
        self.limit, self.rows_total, self.failed = limit, rows_total, failed

    @property
    def over(self) -> bool:
        return self.failed > self.limit * self.rows_total

    def check(self) -> None:
        if self.over:
            raise TooManyFailures(self.failed, int(self.limit * self.rows_total))

    def count(self, row: dict[str, Any]) -> None:
        """A stored row: failed when it has no output and was not a rejected trajectory."""
        if row.get("output") is None and not row.get("rejected"):
            self.failed += 1
            self.check()


def failed_fraction_limit(job: jobs.Job) -> float:
    return float(job.request.get("max_failed_fraction", job_requests.DEFAULT_MAX_FAILED_FRACTION))


def over_limit_message(job: jobs.Job, tally: jobs.Tally) -> str:
    limit = failed_fraction_limit(job)
    return (f"{tally.rows_failed} of {job.rows_total} rows failed ({tally.rows_failed / max(1, job.rows_total):.1%}), "
            f"over the limit of {limit:.0%} (max_failed_fraction): {failure_summary(tally)}")  # fmt: skip


class JobRunner:
    def __init__(self, pool: Any, store: ObjectStore, keys: KeyStore, ingest: Ingest, settings: Settings) -> None:
        self.pool, self.store, self.keys, self.ingest, self.settings = pool, store, keys, ingest, settings
        self.limiters = {name: Limiter.from_settings(p) for name, p in settings.providers.items()}
        self.lease_s = settings.job_lease_s
        self.owner = f"teacher-{secrets.token_hex(6)}"
        self._drivers: dict[str, asyncio.Task[None]] = {}
        self._loop: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    async def start(self) -> None:
        self._loop = asyncio.create_task(self._adopt_forever())

    async def stop(self) -> None:
        """Stop driving (the stored rows stay) and give the leases back for another instance."""
        tasks = [t for t in [self._loop, *self._drivers.values()] if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await jobs.let_go(self.pool, self.owner, list(self._drivers))
        self._drivers.clear()

    # --- requests ---

    async def estimate(self, tenant_id: str, request: pb.CreateGenerationJobRequest) -> dict[str, Any]:
        job, source = await self._prepared(tenant_id, request, job_requests.checked(request))
        return job_requests.estimate(job, source)

    async def create(self, tenant_id: str, request: pb.CreateGenerationJobRequest) -> jobs.Job:
        """Check, estimate and store a job; the same run id (per kind) returns the job made first."""
        job = job_requests.checked(request)
        credentials = await self.keys.credentials(tenant_id, job.provider)  # no key: refused now, not later
        job, source = await self._prepared(tenant_id, request, job)
        if not source and job.kind != pb.JOB_KIND_TOOL_TRAJECTORIES:
            raise InvalidArgument("the source has no rows to generate from", field="dataset_id")
        estimate = job_requests.estimate(job, source)
        stored, created = await jobs.create(self.pool, {
            "id": jobs.new_job_id(), "tenant_id": tenant_id, "run_id": request.run_id, "kind": job.kind,
            "state": pb.JOB_STATE_QUEUED, "teacher": request.teacher, "request": job.stored,
            "rows_total": estimate["rows"], "estimate": estimate, "billed": credentials.billed,
        })  # fmt: skip
        if created:
            log.info("job %s: %s rows from %s", stored.id, stored.rows_total, stored.teacher)
            self._wake.set()
        elif _settings(stored.request) != _settings(job.stored):
            raise FailedPrecondition(
                f"run_id {request.run_id!r} already made job {stored.id} with other settings: a run's job is made "
                "once; give a new run_id for other settings", field="run_id",
            )  # fmt: skip
        return stored

    async def cancel(self, tenant_id: str, job_id: str) -> jobs.Job:
        job = await jobs.cancel(self.pool, tenant_id, job_id)
        driver = self._drivers.get(job_id)
        if driver is not None:
            driver.cancel()
        return job

    async def _prepared(
        self, tenant_id: str, request: pb.CreateGenerationJobRequest, job: job_requests.Checked
    ) -> tuple[job_requests.Checked, Rows]:
        """The job with what it generates from: its tools (trajectories), or its source rows."""
        if job.kind == pb.JOB_KIND_TOOL_TRAJECTORIES:
            return job_requests.with_tools(job, request, await self.ingest.list_tools(tenant_id)), []
        with tempfile.TemporaryDirectory(prefix="distillery-teacher-") as tmp:
            return job, await self._source(tenant_id, request, Path(tmp))

    async def _source(self, tenant_id: str, request: pb.CreateGenerationJobRequest, folder: Path) -> Rows:
        """The canonical rows the job generates from: the dataset's, or the train split's."""
        if request.kind == pb.JOB_KIND_TEXT_DISTILLATION:
            try:
                dataset = await self.ingest.get_dataset(tenant_id, request.dataset_id)
            except NotFound:
                raise InvalidArgument(f"dataset {request.dataset_id} not found; upload it first",
                                      field="dataset_id") from None  # fmt: skip
            job_requests.check_source(request, dataset)
            key, field = dataset.canonical_key, "dataset_id"
        else:
            key, field = request.source_key, "source_key"
            if not key.startswith(tenant_key(tenant_id) + "/") or "/../" in key:
                raise InvalidArgument("source_key must be an object of your own (a split's train_key)", field=field)
        path = folder / "source.jsonl"
        try:
            await asyncio.to_thread(self.store.get_file, key, path)
        except Exception as err:  # minio's S3Error or a connection error: either way the rows can't be read
            raise Unavailable(f"cannot read the source rows from the object store ({type(err).__name__})") from None
        with path.open("rb") as f:
            return list(text_jobs.canonical_rows(f))

    async def _stored_source(self, job: jobs.Job) -> Rows:
        request = pb.CreateGenerationJobRequest(
            kind=pb.JobKind.ValueType(job.kind), dataset_id=job.request.get("dataset_id", ""),
            source_key=job.request.get("source_key", ""),
        )  # fmt: skip
        with tempfile.TemporaryDirectory(prefix="distillery-teacher-") as tmp:
            return await self._source(job.tenant_id, request, Path(tmp))

    # --- driving ---

    async def _adopt_forever(self) -> None:
        while True:
            try:
                for job in await jobs.claim(self.pool, self.owner, self.lease_s * 3):
                    log.info("driving job %s", job.id)
                    self._drivers[job.id] = asyncio.create_task(self._drive(job))
                held = await jobs.renew(self.pool, self.owner, list(self._drivers), self.lease_s * 3)
                for job_id in set(self._drivers) - held:  # cancelled, or taken over after we missed renewals
                    self._drivers[job_id].cancel()
            except Exception:
                log.exception("cannot look for generation jobs to drive; trying again")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.lease_s)

    async def _drive(self, job: jobs.Job) -> None:
        try:
            await self._generate(job)
            await self._finish(job)
        except asyncio.CancelledError:
            raise
        except JobStopped as stopped:
            await self._fail(job, stopped.error.message)
        except TooManyFailures:
            await self._stop_over_limit(job)
        except (FailedPrecondition, InvalidArgument, NotFound) as err:
            await self._fail(job, err.message)
        except Unavailable as err:
            log.warning("job %s waits: %s", job.id, err.message)
            await jobs.let_go(self.pool, self.owner, [job.id])  # taken again at a later look
        except DistilleryError as err:
            await self._fail(job, err.message)
        except Exception:
            log.exception("job %s stopped by an internal error", job.id)
            await self._fail(job, "an internal error stopped the job; see the teacher service's log")
        finally:
            self._drivers.pop(job.id, None)

    async def _generate(self, job: jobs.Job) -> None:
        provider, model = split_teacher(job.teacher)
        adapter = PROVIDERS[provider]
        client = adapter.connect(await self.keys.credentials(job.tenant_id, provider))
        try:
            if job.kind == pb.JOB_KIND_TOOL_TRAJECTORIES:
                await self._walk(job, partial(adapter.complete, client), provider, model)
            else:
                await self._answer(job, partial(adapter.complete, client), provider, model)
        except JobStopped as stopped:
            if provider == "platform" and stopped.error.kind == "auth":
                stopped.error.message = ("the platform endpoint refused the teacher service's key: the operator "
                                         "sets DISTILLERY_PLATFORM_API_KEY")  # fmt: skip
            raise
        finally:
            await adapter.close(client)

    async def _answer(self, job: jobs.Job, call: Call, provider: str, model: str) -> None:
        """A text job: each row one request."""
        done = await jobs.done_rows(self.pool, job.id)
        source = await self._stored_source(job)
        if job.kind == pb.JOB_KIND_TEXT_DISTILLATION:
            tasks = text_jobs.distill_tasks(source, job.request, model, done)
        else:
            tasks = text_jobs.augment_tasks(source, job.request, model, done, seed=len(source))
        in_flight: dict[int, Task] = {}

        def tracked() -> Iterator[Task]:
            for task in tasks:
                in_flight[task.row] = task
                yield task

        budget = await self._budget(job)

        async def store(outcome: Outcome) -> None:
            task = in_flight.pop(outcome.row)
            row = text_jobs.stored_row(job.kind, job.request, task, outcome)
            await jobs.save_row(self.pool, job.id, row)
            budget.count(row)

        await generate(
            tracked(), call, self.limiters[provider], store,
            max_attempts=self.settings.max_attempts, max_backoff_s=self.settings.max_backoff_s,
        )  # fmt: skip

    async def _walk(self, job: jobs.Job, call: Call, provider: str, model: str) -> None:
        """A tool-trajectory job: its prompts written once, then each row one trajectory."""
        spec = tool_jobs.spec_of(job.request)
        limiter = self.limiters[provider]
        teacher = tool_jobs.Teacher(call, limiter, max_attempts=self.settings.max_attempts,
                                    max_backoff_s=self.settings.max_backoff_s)  # fmt: skip
        plan = job.plan
        if plan is None:
            usage = tool_jobs.Usage()
            try:
                prompts = await tool_prompts.expand(teacher, spec, model, usage)
            except tool_jobs.Unanswered as err:
                raise FailedPrecondition(f"the teacher could not write the job's prompts ({err.code}): "
                                         f"{err.message}") from None  # fmt: skip
            plan = await jobs.set_plan(self.pool, job.id, tool_prompts.plan_of(prompts, usage),
                                       len(prompts) * spec.per_prompt)  # fmt: skip
            log.info("job %s: %s prompts from %s seeds", job.id, len(plan["prompts"]), len(spec.seeds))
        trajectories = tool_jobs.Trajectories(teacher, spec, tool_prompts.prompts_of(plan), model)
        done = await jobs.done_rows(self.pool, job.id)
        budget = await self._budget(job)

        async def store(outcome: Outcome) -> None:
            row = trajectory_rows.stored_row(spec, trajectories.prompt(outcome.row), outcome)
            await jobs.save_row(self.pool, job.id, row)
            budget.count(row)

        # Concurrency only: every request of a walk waits for the provider's own limiter.
        walkers = Limiter(limiter.concurrency)
        await generate(trajectories.tasks(done), trajectories.walk, walkers, store, max_attempts=1)

    async def _budget(self, job: jobs.Job) -> FailureBudget:
        """The job's failure budget, its rows failed so far counted (a resumed job may be over it already)."""
        job = await jobs.get(self.pool, job.tenant_id, job.id)  # a trajectory job's rows_total is set by its plan
        budget = FailureBudget(
            failed_fraction_limit(job), job.rows_total, (await jobs.tally(self.pool, job.id)).rows_failed
        )
        budget.check()
        return budget

    async def _stop_over_limit(self, job: jobs.Job) -> None:
        """The job passed its failure limit while generating: it stopped there, and fails naming the failures."""
        job = await jobs.get(self.pool, job.tenant_id, job.id)
        tally = await jobs.tally(self.pool, job.id)
        left = job.rows_total - tally.rows_done - tally.rows_failed - tally.rows_rejected
        log.warning("job %s: %s rows failed, over its limit: stopped with %s rows not asked", job.id,
                    tally.rows_failed, left)  # fmt: skip
        await self._fail(job, f"{over_limit_message(job, tally)}; the job stopped there, {left} rows not asked")

    async def _finish(self, job: jobs.Job) -> None:
        job = await jobs.get(self.pool, job.tenant_id, job.id)  # a trajectory job's rows_total is set by its plan
        tally = await jobs.tally(self.pool, job.id)
        if tally.rows_failed > failed_fraction_limit(job) * job.rows_total:
            await self._fail(job, over_limit_message(job, tally))
            return
        generated = await jobs.outputs(self.pool, job.id)
        duplicates = 0
        if job.kind == pb.JOB_KIND_AUGMENTATION:
            generated, duplicates = text_jobs.deduplicated(generated, await self._stored_source(job))
        if not generated:
            rejected = ", ".join(f"{n} {code}" for code, n in tally.rejected_by_reason.items())
            await self._fail(job, f"no trajectory passed verification: {rejected}" if rejected
                             else "the teacher produced no usable rows")  # fmt: skip
            return
        trajectories = job.kind == pb.JOB_KIND_TOOL_TRAJECTORIES
        key = tenant_key(job.tenant_id, "teacher", "jobs", job.id, "rows.jsonl")
        with tempfile.TemporaryDirectory(prefix="distillery-teacher-") as tmp:
            path, dataset = Path(tmp) / "rows.jsonl", Path(tmp) / f"{job.id}.jsonl"
            path.write_bytes(b"".join(orjson.dumps(row) + b"\n" for row in generated))
            await asyncio.to_thread(self.store.put_file, key, path, "application/jsonl")
            if trajectories:  # the dataset holds the trajectories alone, without where each came from
                dataset.write_bytes(
                    b"".join(orjson.dumps(trajectory_rows.dataset_row(row)) + b"\n" for row in generated)
                )
                uploaded = await self.ingest.upload_tool_calls(job.tenant_id, dataset,
                                                               f"{job.teacher} trajectories ({job.id})")  # fmt: skip
            else:
                path.rename(dataset)
                uploaded = await self.ingest.upload_pairs(job.tenant_id, dataset, f"{job.teacher} answers ({job.id})")
        if not uploaded.dataset.valid:
            bad = uploaded.report.violations[0] if uploaded.report.violations else None
            where = f": line {bad.line}, {bad.field}: {bad.message}" if bad else ""
            kind = "tool-calls" if trajectories else "pairs"
            await self._fail(job, f"the generated rows are not a valid {kind} dataset{where}")
            return
        await jobs.finish(self.pool, job.id, pb.JOB_STATE_SUCCEEDED, output_key=key,
                          output_dataset_id=uploaded.dataset.id, rows_duplicate=duplicates)  # fmt: skip
        log.info("job %s succeeded: %s rows, %s failed, %s rejected, %s duplicates dropped", job.id, len(generated),
                 tally.rows_failed, tally.rows_rejected, duplicates)  # fmt: skip

    async def _fail(self, job: jobs.Job, message: str) -> None:
        if await jobs.finish(self.pool, job.id, pb.JOB_STATE_FAILED, error=message) is not None:
            log.info("job %s failed: %s", job.id, message)


def _settings(stored: dict[str, Any]) -> dict[str, Any]:
    """A stored request without the tools' snapshot (taken from the tenant's list when the job was made),
    to tell a retry of the same job from another job under the same run id."""
    return {key: value for key, value in stored.items() if key != "tools"}
