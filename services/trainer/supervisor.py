"""Which runs this trainer instance drives, so that no run is driven twice and none is
left behind.

Every active run has a lease in its row (owner, until). An instance drives only runs it
holds the lease of and renews it every ``lease_s``; every ``lease_s`` it also adopts
active runs whose lease has lapsed: new ones, and those of an instance that stopped
(leases given back at shutdown) or died (lease expired after three missed renewals).
So a restarted trainer, or another replica, brings every run to a final state.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
from functools import partial
from typing import Any

from distillery.common.v1 import common_pb2
from distillery.trainer.v1 import trainer_pb2 as pb
from services.common.errors import DistilleryError
from services.trainer import estimates, rubric_runs, run_claims, run_recipes, run_requests, runs
from services.trainer.pipeline import Pipeline
from services.trainer.students import StudentSources

log = logging.getLogger("distillery.trainer.supervisor")


def _same_request(earlier: runs.Run, stored: dict[str, Any]) -> runs.Run:
    """``earlier`` when ``stored`` asks for it (``run_claims.check_same_request``), compared with its request as
    it was created: the sizing of its auto fields since (``run_recipes.as_created``) is not a difference."""
    created = dataclasses.replace(earlier, request=run_recipes.as_created(earlier.request))
    run_claims.check_same_request(created, stored)
    return earlier


class Supervisor:
    def __init__(
        self, pool: Any, pipeline: Pipeline, lease_s: float, students: StudentSources | None = None,
        recipes: dict[str, run_recipes.Recipe] | None = None,
    ) -> None:  # fmt: skip
        self.pool = pool
        # Where student models may come from; None: hub ids only.
        self.students = students
        # The recipes runs may name (``run_recipes.load``); None: the platform's.
        self.recipes = run_recipes.defaults() if recipes is None else recipes
        self.pipeline = pipeline
        self.lease_s = lease_s
        self.owner = f"trainer-{secrets.token_hex(6)}"
        self._drivers: dict[str, asyncio.Task[None]] = {}
        self._watcher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._watcher = asyncio.create_task(self._adopt_forever())

    async def stop(self) -> None:
        """Stop driving (runs and their Ray jobs go on) and give the leases back."""
        tasks = [t for t in [self._watcher, *self._drivers.values()] if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await runs.let_go(self.pool, list(self._drivers), self.owner)
        self._drivers.clear()

    async def create(self, tenant_id: str, request: pb.CreateRunRequest) -> runs.Run:
        """Check the request, store the run with a slot of the tenant's allowance reserved, start it.
        The same idempotency key returns the run first made with it, to every caller however many race
        (``run_claims``); the same key with other parameters is refused."""
        stored = run_requests.checked(request, self.students, self.recipes, self.pipeline.deployment())
        await run_requests.resolve_student(
            self.pipeline.peers, tenant_id, stored, self.students, self.pipeline.s3.bucket
        )
        path = common_pb2.TrainingPath.Value(stored["path"])  # the request's, or its recipe's
        await run_requests.check_with_teacher(self.pipeline.peers, tenant_id, path, stored)
        await rubric_runs.resolve(self.pool, tenant_id, stored)  # the rubric's id: the version the run keeps
        key = request.idempotency_key
        if key and (earlier := await runs.find_by_key(self.pool, tenant_id, key)) is not None:
            return _same_request(earlier, stored)
        run_id, mode = runs.new_run_id(), common_pb2.TrainingMode.Value(stored["mode"])
        run, created = await run_claims.create(
            self.pool,
            runs.Run(
                id=run_id, tenant_id=tenant_id, idempotency_key=key, path=path, mode=mode,
                state=pb.RUN_STATE_QUEUED, request=stored, created_at=None, updated_at=None,  # type: ignore[arg-type]
            ),
            reserve=partial(self.pipeline.peers.reserve, tenant_id, run_id),  # RESOURCE_EXHAUSTED when full
            release=partial(self.pipeline.peers.release, tenant_id, run_id),
        )  # fmt: skip
        if not created:  # a concurrent call with the same key made it
            return _same_request(run, stored)
        await self._take(run.id, tenant_id)
        return run

    async def estimate(self, tenant_id: str, request: pb.CreateRunRequest) -> pb.RunEstimate:
        """What the run would take (``estimates``), its request checked as ``create`` checks it; creates nothing."""
        stored = run_requests.checked(request, self.students, self.recipes, self.pipeline.deployment())
        peers = self.pipeline.peers
        await run_requests.resolve_student(peers, tenant_id, stored, self.students, self.pipeline.s3.bucket)
        path = common_pb2.TrainingPath.Value(stored["path"])
        return await estimates.for_run(peers, tenant_id, path, stored, self.pipeline.deployment())

    async def cancel(self, tenant_id: str, run_id: str) -> runs.Run:
        return await self.pipeline.cancel(tenant_id, run_id)

    async def _adopt_forever(self) -> None:
        while True:
            try:
                for run_id, tenant_id in await runs.unclaimed(self.pool):
                    await self._take(run_id, tenant_id)
            except Exception:
                log.exception("cannot look for runs to drive; trying again")
            await asyncio.sleep(self.lease_s)

    async def _take(self, run_id: str, tenant_id: str) -> None:
        running = self._drivers.get(run_id)
        if running is not None and not running.done():
            return
        if await runs.claim(self.pool, run_id, self.owner, self.lease_s * 3):
            log.info("driving run %s", run_id)
            self._drivers[run_id] = asyncio.create_task(self._drive(run_id, tenant_id))

    async def _drive(self, run_id: str, tenant_id: str) -> None:
        renewing = asyncio.create_task(self._renew(run_id, asyncio.current_task()))
        try:
            await self.pipeline.drive(run_id, tenant_id)
        except DistilleryError as err:
            log.error("run %s: %s", run_id, err.message)
        finally:
            renewing.cancel()
            self._drivers.pop(run_id, None)

    async def _renew(self, run_id: str, driver: asyncio.Task[Any] | None) -> None:
        while True:
            await asyncio.sleep(self.lease_s)
            try:
                still_ours = await runs.claim(self.pool, run_id, self.owner, self.lease_s * 3)
            except Exception:
                log.exception("cannot renew the lease of run %s", run_id)
                continue
            if not still_ours and driver is not None:
                log.warning("lost the lease of run %s; another instance drives it now", run_id)
                driver.cancel()
                return
