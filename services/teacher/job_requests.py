"""Checks of a CreateGenerationJobRequest, and the estimate of what it will take.

Each refusal names the field and says what to give instead. The estimate counts the
rows exactly (tool trajectories: if the teacher writes every prompt asked of it) and
the tokens roughly (4 characters a token; an answer at half the output cap), and
prices them from ``prices.py``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format

from distillery.ingest.v1 import ingest_pb2
from distillery.teacher.v1 import teacher_pb2 as pb
from services.common.errors import InvalidArgument
from services.teacher import prices, text_jobs, tool_jobs
from services.teacher.providers import split_teacher

DEFAULT_MAX_FAILED_FRACTION = 0.05
MAX_AUGMENT_COUNT = 100_000
CHARS_PER_TOKEN = 4
# Tool trajectories.
MAX_SEED_PROMPTS = 10_000
MAX_TRAJECTORIES_PER_PROMPT = 50
MAX_PARAPHRASES = 20
MAX_NO_TOOL_SHARE = 0.9
MAX_TURNS = 16
MAX_TOOL_RESPONSE_CHARS = 64 * 1024
MAX_TRAJECTORIES = 200_000


def check_system_prompts(prompts: Any) -> None:
    """Distill-text answers every input under every named system prompt: at least one, names unique."""
    if not prompts:
        raise InvalidArgument(
            "a distill-text run needs at least one named system prompt: the teacher answers every input under "
            "each one (add --system-prompt NAME=TEXT); an input-only dataset has no instructions of its own",
            field="system_prompts",
        )
    seen: set[str] = set()
    for i, prompt in enumerate(prompts):
        if not prompt.name.strip() or not prompt.text.strip():
            raise InvalidArgument(f"system prompt {i + 1} needs a name and a text", field=f"system_prompts[{i}]")
        if prompt.name in seen:
            raise InvalidArgument(f"two system prompts are named {prompt.name!r}; names must be unique",
                                  field=f"system_prompts[{i}].name")  # fmt: skip
        seen.add(prompt.name)


def check_parameters(parameters: pb.GenerationParameters) -> None:
    if parameters.temperature < 0 or parameters.temperature > 2:
        raise InvalidArgument(f"temperature must be between 0 and 2 (got {parameters.temperature})",
                              field="generation.temperature")  # fmt: skip
    if parameters.max_output_tokens < 0 or parameters.max_output_tokens > 32_768:
        raise InvalidArgument(f"max_output_tokens must be between 1 and 32768 (got {parameters.max_output_tokens};"
                              " 0 takes the default, 512)", field="generation.max_output_tokens")  # fmt: skip


@dataclass(frozen=True)
class Checked:
    """A request that passed its checks, as stored with the job."""

    kind: int
    provider: str
    model: str
    stored: dict[str, Any]


def check_settings(request: pb.CreateGenerationJobRequest) -> tuple[str, str]:
    """The job's settings (everything but the data it reads), checked; the teacher's provider and model.
    ``CheckGenerationJob`` answers with this alone, so a run is refused before it is stored."""
    kinds = (pb.JOB_KIND_TEXT_DISTILLATION, pb.JOB_KIND_AUGMENTATION, pb.JOB_KIND_TOOL_TRAJECTORIES)
    if request.kind not in kinds:
        raise InvalidArgument("kind is required: text distillation, augmentation or tool trajectories", field="kind")
    provider, model = split_teacher(request.teacher)
    check_parameters(request.parameters)
    if not 0.0 <= request.max_failed_fraction <= 1.0:
        raise InvalidArgument(
            f"max_failed_fraction must be between 0 and 1 (got {request.max_failed_fraction}); "
            "0.05 fails the job when more than 5% of rows fail",
            field="max_failed_fraction",
        )
    if request.kind == pb.JOB_KIND_TEXT_DISTILLATION:
        check_system_prompts(request.system_prompts)
    elif request.kind == pb.JOB_KIND_TOOL_TRAJECTORIES:
        check_trajectories(request)
    else:
        count = request.parameters.augment_count
        if not 1 <= count <= MAX_AUGMENT_COUNT:
            raise InvalidArgument(f"augment_count must be between 1 and {MAX_AUGMENT_COUNT} (got {count})",
                                  field="parameters.augment_count")  # fmt: skip
    return provider, model


def checked(request: pb.CreateGenerationJobRequest) -> Checked:
    """The request as stored with the job; for tool trajectories ``with_tools`` adds the tools."""
    provider, model = check_settings(request)
    if request.kind == pb.JOB_KIND_TEXT_DISTILLATION and not request.dataset_id:
        raise InvalidArgument("dataset_id is required: an input-only dataset to answer", field="dataset_id")
    if request.kind == pb.JOB_KIND_AUGMENTATION and not request.source_key:
        raise InvalidArgument("source_key is required: the train split's rows to write new pairs like",
                              field="source_key")  # fmt: skip
    stored = json_format.MessageToDict(request, preserving_proto_field_name=True)
    stored["max_failed_fraction"] = request.max_failed_fraction or DEFAULT_MAX_FAILED_FRACTION
    return Checked(request.kind, provider, model, stored)


def check_trajectories(request: pb.CreateGenerationJobRequest) -> None:
    """What a tool-trajectory job needs besides its tools (``with_tools`` checks those against ingest's list)."""
    if not request.tool_ids:
        raise InvalidArgument("tool_ids is required: the ids of the tools to call, from your tool list "
                              "(`distillery tools list`)", field="tool_ids")  # fmt: skip
    if len(set(request.tool_ids)) != len(request.tool_ids):
        raise InvalidArgument("tool_ids names a tool twice", field="tool_ids")
    if not request.seed_prompts:
        raise InvalidArgument("seed_prompts is required: example requests of your users that the tools serve",
                              field="seed_prompts")  # fmt: skip
    if len(request.seed_prompts) > MAX_SEED_PROMPTS:
        raise InvalidArgument(f"at most {MAX_SEED_PROMPTS} seed prompts (got {len(request.seed_prompts)})",
                              field="seed_prompts")  # fmt: skip
    for field, texts in (("seed_prompts", request.seed_prompts), ("objectives", request.objectives)):
        for i, text in enumerate(texts):
            if not text.strip():
                raise InvalidArgument(f"{field} {i + 1} is blank", field=f"{field}[{i}]")
            if len(text) > tool_jobs.MAX_PROMPT_CHARS:
                raise InvalidArgument(f"{field} {i + 1} is over {tool_jobs.MAX_PROMPT_CHARS} characters",
                                      field=f"{field}[{i}]")  # fmt: skip
    parameters = request.parameters
    bounds = (
        ("trajectories_per_prompt", parameters.trajectories_per_prompt, MAX_TRAJECTORIES_PER_PROMPT, "2"),
        ("paraphrases", parameters.paraphrases, MAX_PARAPHRASES, "unset: 2"),
        ("max_turns", parameters.max_turns, MAX_TURNS, "4"),
    )
    for name, value, most, default in bounds:
        if not 0 <= value <= most:
            raise InvalidArgument(f"{name} must be between 0 ({default}) and {most} (got {value})",
                                  field=f"parameters.{name}")  # fmt: skip
    if not 0.0 <= parameters.no_tool_share <= MAX_NO_TOOL_SHARE:
        raise InvalidArgument(f"no_tool_share must be between 0 and {MAX_NO_TOOL_SHARE} (got "
                              f"{parameters.no_tool_share}): the share of prompts that no tool fits",
                              field="parameters.no_tool_share")  # fmt: skip
    for i, example in enumerate(request.tool_responses):
        if not example.tool_name or not example.response.strip():
            raise InvalidArgument(f"tool response {i + 1} needs a tool_name and a response",
                                  field=f"tool_responses[{i}]")  # fmt: skip
        if len(example.response) > MAX_TOOL_RESPONSE_CHARS:
            raise InvalidArgument(f"tool response {i + 1} is over {MAX_TOOL_RESPONSE_CHARS} characters",
                                  field=f"tool_responses[{i}].response")  # fmt: skip


def with_tools(job: Checked, request: pb.CreateGenerationJobRequest, listed: list[ingest_pb2.Tool]) -> Checked:
    """A trajectory job with its tools (canonical, in the order of tool_ids) taken from the tenant's
    active list, and its size checked."""
    by_id = {tool.id: tool for tool in listed}
    missing = [tool_id for tool_id in request.tool_ids if tool_id not in by_id]
    if missing:
        raise InvalidArgument(f"no tool {', '.join(missing)} in your tool list (`distillery tools list`); import it "
                              "first", field="tool_ids")  # fmt: skip
    tools = [
        {"name": tool.name, "description": tool.description, "parameters": json.loads(tool.parameters_json or "{}")}
        for tool in (by_id[i] for i in request.tool_ids)
    ]  # fmt: skip
    names = {tool["name"] for tool in tools}
    for i, example in enumerate(request.tool_responses):
        if example.tool_name not in names:
            raise InvalidArgument(f"tool response {i + 1} is for {example.tool_name!r}, not one of the job's tools "
                                  f"({', '.join(sorted(names))})", field=f"tool_responses[{i}].tool_name")  # fmt: skip
    stored = {**job.stored, "tools": tools}
    rows = tool_jobs.estimate(tool_jobs.spec_of(stored))["rows"]
    if rows > MAX_TRAJECTORIES:
        raise InvalidArgument(f"the job would make {rows} trajectories, over the limit of {MAX_TRAJECTORIES}: fewer "
                              "seed prompts, paraphrases or trajectories per prompt", field="seed_prompts")  # fmt: skip
    return Checked(job.kind, job.provider, job.model, stored)


def check_source(request: pb.CreateGenerationJobRequest, dataset: ingest_pb2.Dataset) -> None:
    """A distillation job answers a valid input-only dataset."""
    if dataset.kind != ingest_pb2.DATASET_KIND_INPUTS:
        kind = ingest_pb2.DatasetKind.Name(dataset.kind).removeprefix("DATASET_KIND_").lower()
        raise InvalidArgument(f"text distillation answers an input-only dataset; {dataset.id} is a {kind} dataset "
                              "(upload the inputs with --kind inputs)", field="dataset_id")  # fmt: skip
    if not dataset.valid:
        raise InvalidArgument(f"dataset {dataset.id} has {dataset.report.violation_count} violation(s); fix them and "
                              "upload it again", field="dataset_id")  # fmt: skip


def estimate(job: Checked, source: list[list[dict[str, Any]]]) -> dict[str, Any]:
    """Rows, tokens and cost of a job over its source rows (canonical messages; none for tool trajectories)."""
    half_cap = text_jobs.max_output_tokens(job.stored) // 2
    if job.kind == pb.JOB_KIND_TOOL_TRAJECTORIES:
        counted = tool_jobs.estimate(tool_jobs.spec_of(job.stored))
        rows, input_tokens, output_tokens = counted["rows"], counted["input_tokens"], counted["output_tokens"]
        return _priced(job, rows, input_tokens, output_tokens)
    if job.kind == pb.JOB_KIND_TEXT_DISTILLATION:
        prompts = text_jobs.prompts_of(job.stored)
        input_chars = sum(len(m[-1]["content"]) for m in source) * len(prompts)
        input_chars += sum(len(p["text"]) for p in prompts) * len(source)
        rows = len(source) * len(prompts)
    else:
        rows = int(job.stored.get("parameters", {}).get("augment_count", 0))
        pair_chars = sum(len(m[1]["content"]) + len(m[2]["content"]) for m in source) / max(1, len(source))
        input_chars = int(rows * (len(text_jobs.AUGMENT_INSTRUCTIONS) + text_jobs.EXAMPLES_SHOWN * pair_chars))
    return _priced(job, rows, input_chars // CHARS_PER_TOKEN, rows * half_cap)


def _priced(job: Checked, rows: int, input_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {
        "rows": rows,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "estimated_cost_usd": prices.cost_usd(job.provider, job.model, input_tokens, output_tokens),
        "price_known": prices.price_of(job.provider, job.model) is not None,
    }
