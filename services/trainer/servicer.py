"""TrainerService: translates proto requests to calls of the domain modules and back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from google.protobuf import json_format
from psycopg_pool import AsyncConnectionPool

from distillery.trainer.v1 import trainer_pb2 as pb
from distillery.trainer.v1 import trainer_pb2_grpc
from services.common import auth
from services.common.errors import InvalidArgument, NotFound
from services.common.ids import check_id, check_text
from services.common.protoconv import page_size, timestamp
from services.trainer import pauses, pipeline, runs
from services.trainer.rubric_api import RubricRpcs, validation_pb
from services.trainer.supervisor import Supervisor

WATCH_POLL_S = 0.5
LOG_TAIL = 200
MAX_LOG_TAIL = 10_000
MAX_RECIPE_NAME_CHARS = 128


def run_pb(run: runs.Run) -> pb.Run:
    message = pb.Run(
        id=run.id, path=run.path, mode=run.mode, state=run.state, model_id=run.model_id, metrics=run.metrics,
        created_at=timestamp(run.created_at), updated_at=timestamp(run.updated_at),
    )  # fmt: skip
    json_format.ParseDict(run.request, message.request, ignore_unknown_fields=True)
    message.dataset_id = message.request.dataset_id
    message.eval_dataset_id = message.request.eval_dataset_id
    message.student_model = message.request.student_model
    message.teacher = message.request.teacher
    json_format.ParseDict(run.progress, message.progress, ignore_unknown_fields=True)
    if usage := (run.generation or {}).get("usage"):
        json_format.ParseDict(usage, message.teacher_usage, ignore_unknown_fields=True)
    if run.error:
        json_format.ParseDict(run.error, message.error, ignore_unknown_fields=True)
    result = run.result or {}  # the job's result.json: how training ended, the best step, the evals
    stop = result.get("stop") or {}
    message.stop_reason, message.stop_step = str(stop.get("reason", "")), int(stop.get("step", 0))
    message.best_step = int(result.get("best_step", 0))
    for evaluation in result.get("evals") or []:
        message.evals.add(step=int(evaluation["step"]), values=evaluation["values"])
    if (validation := validation_pb(run.rubric_validation)) is not None:
        message.rubric_validation.CopyFrom(validation)
    return message


def event_pb(event: runs.Event) -> pb.RunEvent:
    message = pb.RunEvent(run_id=event.run_id, sequence=event.sequence, at=timestamp(event.at))
    json_format.ParseDict(event.event, message, ignore_unknown_fields=True)
    return message


class TrainerServicer(RubricRpcs, trainer_pb2_grpc.TrainerServiceServicer):
    """Who may call each method is declared in ``access.py`` and checked before the call. The rubric methods
    are ``RubricRpcs``'."""

    def __init__(self, pool: AsyncConnectionPool, supervisor: Supervisor) -> None:
        self.pool = pool
        self.supervisor = supervisor

    async def CreateRun(self, request: Any, context: Any) -> pb.Run:
        return run_pb(await self.supervisor.create(auth.current_caller().tenant_id, request))

    async def GetRun(self, request: Any, context: Any) -> pb.Run:
        return run_pb(await runs.get(self.pool, auth.current_caller().tenant_id, check_id(request.id, "id")))

    async def ListRuns(self, request: Any, context: Any) -> pb.ListRunsResponse:
        if request.state not in pb.RunState.values():
            raise InvalidArgument(f"state {request.state} is not a run state", field="state")
        found, next_token = await runs.list_page(
            self.pool, auth.current_caller().tenant_id, request.state, page_size(request.page), request.page.page_token
        )
        return pb.ListRunsResponse(runs=[run_pb(r) for r in found], page={"next_page_token": next_token})

    async def CancelRun(self, request: Any, context: Any) -> pb.Run:
        return run_pb(await self.supervisor.cancel(auth.current_caller().tenant_id, check_id(request.id, "id")))

    async def WatchRun(self, request: Any, context: Any) -> AsyncIterator[pb.RunEvent]:
        tenant_id = auth.current_caller().tenant_id
        await runs.get(self.pool, tenant_id, check_id(request.id, "id"))  # NOT_FOUND before the stream starts
        after = request.after_sequence
        while True:
            for event in await runs.events_after(self.pool, request.id, after):
                after = event.sequence
                yield event_pb(event)
            if (await runs.get(self.pool, tenant_id, request.id)).state in runs.FINAL:
                for event in await runs.events_after(self.pool, request.id, after):
                    yield event_pb(event)
                return
            await asyncio.sleep(WATCH_POLL_S)

    async def GetRunLogs(self, request: Any, context: Any) -> pb.GetRunLogsResponse:
        if not 0 <= request.tail <= MAX_LOG_TAIL:
            raise InvalidArgument(f"tail must be 0 (the last {LOG_TAIL}) to {MAX_LOG_TAIL} lines", field="tail")
        run = await runs.get(self.pool, auth.current_caller().tenant_id, check_id(request.id, "id"))
        if not run.job_attempt:
            return pb.GetRunLogsResponse()
        text = await self.supervisor.pipeline.jobs.logs(pipeline.job_id(run, run.job_attempt))
        return pb.GetRunLogsResponse(lines=text.splitlines()[-(request.tail or LOG_TAIL) :])

    async def ReportRunEvents(self, request: Any, context: Any) -> pb.ReportRunEventsResponse:
        run_id = auth.current_caller().run_id  # the run whose token the job pushed with
        events = [
            json_format.MessageToDict(e)
            for e in request.events
            if e.WhichOneof("payload") in ("progress", "metrics", "log")
        ]
        run = await runs.report(self.pool, run_id, events)
        return pb.ReportRunEventsResponse(keep_going=runs.job_may_go_on(run.state))

    async def EstimateRun(self, request: Any, context: Any) -> pb.RunEstimate:
        return await self.supervisor.estimate(auth.current_caller().tenant_id, request)

    async def PauseRun(self, request: Any, context: Any) -> pb.Run:
        return run_pb(await pauses.pause(self.pool, auth.current_caller().tenant_id, check_id(request.id, "id")))

    async def ResumeRun(self, request: Any, context: Any) -> pb.Run:
        return run_pb(await pauses.resume(self.pool, auth.current_caller().tenant_id, check_id(request.id, "id")))

    async def ListRecipes(self, request: Any, context: Any) -> pb.ListRecipesResponse:
        recipes = self.supervisor.recipes
        return pb.ListRecipesResponse(recipes=[recipes[name].to_proto() for name in sorted(recipes)])

    async def GetRecipe(self, request: Any, context: Any) -> pb.Recipe:
        recipes = self.supervisor.recipes
        recipe = recipes.get(check_text(request.name, "name", MAX_RECIPE_NAME_CHARS))
        if recipe is None:
            raise NotFound(f"recipe {request.name!r} not found: give one of {', '.join(sorted(recipes))} "
                           "(`distillery recipes list`)", field="name")  # fmt: skip
        return recipe.to_proto()
