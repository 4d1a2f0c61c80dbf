"""TeacherService: translates proto requests to calls of the domain modules and back."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Any

from psycopg_pool import AsyncConnectionPool

from distillery.common.v1 import common_pb2
from distillery.teacher.v1 import teacher_pb2, teacher_pb2_grpc
from services.common import auth
from services.common.protoconv import Bounds, bounded, page_size, timestamp
from services.teacher import completions, job_requests, jobs, judging, prices, tool_descriptions
from services.teacher.job_runner import JobRunner
from services.teacher.keys import KeyStore, StoredKey
from services.teacher.providers import split_teacher
from services.teacher.settings import Settings

WATCH_POLL_S = 0.5


def provider_name(provider: int) -> str:
    """``PROVIDER_OPENAI`` -> "openai"; "" for PROVIDER_UNSPECIFIED or a number this version does not know."""
    if provider == teacher_pb2.PROVIDER_UNSPECIFIED or provider not in teacher_pb2.Provider.values():
        return ""
    return teacher_pb2.Provider.Name(provider).removeprefix("PROVIDER_").lower()


def usage_pb(teacher: str, counted: Any) -> common_pb2.Usage:
    """What a call to ``teacher`` used (``counted``: its input and output tokens, requests, billed), priced."""
    provider, model = split_teacher(teacher)
    return common_pb2.Usage(
        input_tokens=counted.input_tokens, output_tokens=counted.output_tokens, requests=counted.requests,
        estimated_cost_usd=prices.cost_usd(provider, model, counted.input_tokens, counted.output_tokens),
        billed=counted.billed,
    )  # fmt: skip


def estimate_pb(estimate: dict[str, Any]) -> teacher_pb2.JobEstimate:
    return teacher_pb2.JobEstimate(
        rows=estimate["rows"],
        input_tokens=estimate["input_tokens"],
        output_tokens=estimate["output_tokens"],
        estimated_cost_usd=estimate["estimated_cost_usd"],
    )


def provider_key_pb(key: StoredKey) -> teacher_pb2.ProviderKey:
    return teacher_pb2.ProviderKey(
        provider=teacher_pb2.Provider.Value(f"PROVIDER_{key.provider.upper()}"),
        last4=key.last4,
        created_at=timestamp(key.created_at),
        checked_at=timestamp(key.checked_at),
    )


# Beyond protoconv's defaults (ids, names, texts of 64 KiB, lists of 1,000, numbers >= 0): docs/api.md.
BOUNDS = Bounds(
    # keys.py refuses a key over 1,024 itself, saying what a key looks like
    strings={"api_key": 4096, "system_prompt": judging.MAX_PROMPT_CHARS, "user_template": judging.MAX_PROMPT_CHARS,
             "messages_json": completions.MAX_MESSAGES_CHARS, "response_schema_json": 256 * 1024},
    lists={"seed_prompts": job_requests.MAX_SEED_PROMPTS, "system_prompts": 100, "tool_ids": 256, "objectives": 100,
           "rows": judging.MAX_ROWS, "tools_json": 256},
    numbers={"scale_min": (0, judging.MAX_SCALE), "scale_max": (0, judging.MAX_SCALE),
             "max_failed_fraction": (0.0, 1.0), "parameters.temperature": (0.0, 2.0),
             "parameters.no_tool_share": (0.0, 1.0), "parameters.max_output_tokens": (0, 32_768),
             "temperature": (0.0, 2.0), "max_tokens": (0, completions.MAX_OUTPUT_TOKENS)},
)  # fmt: skip


@bounded(teacher_pb2.DESCRIPTOR.services_by_name["TeacherService"], BOUNDS)
class TeacherServicer(teacher_pb2_grpc.TeacherServiceServicer):
    def __init__(self, pool: AsyncConnectionPool, settings: Settings, keys: KeyStore, runner: JobRunner) -> None:
        self.pool = pool
        self.settings = settings
        self.keys = keys
        self.runner = runner

    async def SetProviderKey(self, request: Any, context: Any) -> teacher_pb2.ProviderKey:
        stored = await self.keys.set(
            auth.current_caller().tenant_id, provider_name(request.provider), request.api_key, request.skip_check
        )
        return provider_key_pb(stored)

    async def ListProviderKeys(self, request: Any, context: Any) -> teacher_pb2.ListProviderKeysResponse:
        found = await self.keys.list(auth.current_caller().tenant_id)
        return teacher_pb2.ListProviderKeysResponse(keys=[provider_key_pb(k) for k in found])

    async def DeleteProviderKey(self, request: Any, context: Any) -> teacher_pb2.DeleteProviderKeyResponse:
        await self.keys.delete(auth.current_caller().tenant_id, provider_name(request.provider))
        return teacher_pb2.DeleteProviderKeyResponse()

    async def DescribeTool(self, request: Any, context: Any) -> teacher_pb2.DescribeToolResponse:
        tenant_id = auth.current_caller().tenant_id
        described = await tool_descriptions.describe(
            self.keys, self.runner.limiters, tenant_id, request.teacher, request.description,
            attempts=self.settings.max_attempts, max_backoff_s=self.settings.max_backoff_s,
        )  # fmt: skip
        await tool_descriptions.record(self.pool, tenant_id, request.teacher, described)
        usage = usage_pb(request.teacher, described)
        violations = [common_pb2.Violation(**asdict(v)) for v in described.report.violations]
        if described.tool is not None:
            tool = described.tool
            return teacher_pb2.DescribeToolResponse(
                name=tool.name,
                description=tool.description,
                violations=violations,
                parameters_json=json.dumps(tool.parameters, ensure_ascii=False),
                usage=usage,
            )
        answer = described.answer or {}
        name, text, parameters = answer.get("name"), answer.get("description"), answer.get("parameters")
        return teacher_pb2.DescribeToolResponse(
            name=name if isinstance(name, str) else "",
            description=text if isinstance(text, str) else "",
            parameters_json=json.dumps(parameters, ensure_ascii=False) if isinstance(parameters, dict) else "",
            violations=violations,
            usage=usage,
        )

    async def JudgeAnswers(self, request: Any, context: Any) -> teacher_pb2.JudgeAnswersResponse:
        tenant_id = auth.current_caller().tenant_id
        judged = await judging.judge(
            self.keys, self.runner.limiters, tenant_id, request,
            attempts=self.settings.max_attempts, max_backoff_s=self.settings.max_backoff_s,
        )  # fmt: skip
        await judging.record(self.pool, tenant_id, request.teacher, judged)
        usage = usage_pb(request.teacher, judged)
        scores = [teacher_pb2.JudgeScore(score=row.score or 0.0, reply=row.reply, error=row.error, message=row.message)
                  for row in judged.rows]  # fmt: skip
        return teacher_pb2.JudgeAnswersResponse(scores=scores, usage=usage)

    async def Complete(self, request: Any, context: Any) -> teacher_pb2.CompleteResponse:
        tenant_id = auth.current_caller().tenant_id
        completed = await completions.complete(
            self.keys, self.runner.limiters, tenant_id, request,
            attempts=self.settings.max_attempts, max_backoff_s=self.settings.max_backoff_s,
        )  # fmt: skip
        await completions.record(self.pool, tenant_id, request.model, completed)
        answer = completed.completion
        return teacher_pb2.CompleteResponse(
            content=answer.text,
            tool_calls=[teacher_pb2.CompletedToolCall(id=c.id, name=c.name, arguments_json=c.arguments)
                        for c in answer.tool_calls],
            finish_reason=completed.finish_reason,
            prompt_tokens=answer.input_tokens,
            completion_tokens=answer.output_tokens,
        )  # fmt: skip

    async def CheckGenerationJob(self, request: Any, context: Any) -> teacher_pb2.CheckGenerationJobResponse:
        job_requests.check_settings(request)
        return teacher_pb2.CheckGenerationJobResponse()

    async def EstimateJob(self, request: Any, context: Any) -> teacher_pb2.JobEstimate:
        found = await self.runner.estimate(auth.current_caller().tenant_id, request)
        return estimate_pb(found)

    async def CreateGenerationJob(self, request: Any, context: Any) -> teacher_pb2.GenerationJob:
        job = await self.runner.create(auth.current_caller().tenant_id, request)
        return await self._job_pb(job)

    async def GetGenerationJob(self, request: Any, context: Any) -> teacher_pb2.GenerationJob:
        return await self._job_pb(await jobs.get(self.pool, auth.current_caller().tenant_id, request.id))

    async def ListGenerationJobs(self, request: Any, context: Any) -> teacher_pb2.ListGenerationJobsResponse:
        found, next_token = await jobs.list_page(
            self.pool, auth.current_caller().tenant_id, page_size(request.page), request.page.page_token
        )
        return teacher_pb2.ListGenerationJobsResponse(
            jobs=[await self._job_pb(j) for j in found], page={"next_page_token": next_token}
        )

    async def CancelGenerationJob(self, request: Any, context: Any) -> teacher_pb2.GenerationJob:
        return await self._job_pb(await self.runner.cancel(auth.current_caller().tenant_id, request.id))

    async def WatchGenerationJob(self, request: Any, context: Any) -> AsyncIterator[teacher_pb2.GenerationJob]:
        tenant_id, last = auth.current_caller().tenant_id, None
        while True:
            job = await self._job_pb(await jobs.get(self.pool, tenant_id, request.id))
            if job != last:
                yield job
                last = job
            if job.state in jobs.FINAL:
                return
            await asyncio.sleep(WATCH_POLL_S)

    async def _job_pb(self, job: jobs.Job) -> teacher_pb2.GenerationJob:
        tally = await jobs.tally(self.pool, job.id)
        usage = common_pb2.Usage(
            input_tokens=tally.input_tokens, output_tokens=tally.output_tokens, requests=tally.requests,
            estimated_cost_usd=tally.cost_usd(job.teacher), billed=job.billed,
        )  # fmt: skip
        return teacher_pb2.GenerationJob(
            id=job.id, kind=job.kind, state=job.state, teacher=job.teacher, rows_total=job.rows_total,
            rows_done=tally.rows_done, rows_failed=tally.rows_failed, usage=usage,
            output_dataset_id=job.output_dataset_id, error=job.error, created_at=timestamp(job.created_at),
            updated_at=timestamp(job.updated_at), rows_by_prompt=tally.by_prompt,
            failures=[teacher_pb2.RowFailure(row=f.row, prompt_name=f.prompt_name, code=f.code, message=f.message)
                      for f in tally.failures],
            estimate=estimate_pb(job.estimate), output_key=job.output_key, rows_duplicate=job.rows_duplicate,
            rejected_by_reason=tally.rejected_by_reason, rows_rejected=tally.rows_rejected,
            rejections=[teacher_pb2.RowFailure(row=f.row, prompt_name=f.prompt_name, code=f.code, message=f.message)
                        for f in tally.rejections],
        )  # fmt: skip
