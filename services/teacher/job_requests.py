"""Checks of a CreateGenerationJobRequest, and the estimate of what it will take.

Each refusal names the field and says what to give instead. The estimate counts the
rows exactly and the tokens roughly (4 characters a token; an answer at half the
output cap), and prices them from ``prices.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format

from distillery.ingest.v1 import ingest_pb2
from distillery.teacher.v1 import teacher_pb2 as pb
from services.common.errors import InvalidArgument, Unimplemented
from services.teacher import prices, text_jobs
from services.teacher.providers import split_teacher

DEFAULT_MAX_FAILED_FRACTION = 0.05
MAX_AUGMENT_COUNT = 100_000
CHARS_PER_TOKEN = 4


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


def checked(request: pb.CreateGenerationJobRequest) -> Checked:
    if request.kind == pb.JOB_KIND_TOOL_TRAJECTORIES:
        raise Unimplemented("tool-calling trajectories arrive with the tool-calling distillation path")
    if request.kind not in (pb.JOB_KIND_TEXT_DISTILLATION, pb.JOB_KIND_AUGMENTATION):
        raise InvalidArgument("kind is required: text distillation or augmentation", field="kind")
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
        if not request.dataset_id:
            raise InvalidArgument("dataset_id is required: an input-only dataset to answer", field="dataset_id")
    else:
        count = request.parameters.augment_count
        if not 1 <= count <= MAX_AUGMENT_COUNT:
            raise InvalidArgument(f"augment_count must be between 1 and {MAX_AUGMENT_COUNT} (got {count})",
                                  field="parameters.augment_count")  # fmt: skip
        if not request.source_key:
            raise InvalidArgument("source_key is required: the train split's rows to write new pairs like",
                                  field="source_key")  # fmt: skip
    stored = json_format.MessageToDict(request, preserving_proto_field_name=True)
    stored["max_failed_fraction"] = request.max_failed_fraction or DEFAULT_MAX_FAILED_FRACTION
    return Checked(request.kind, provider, model, stored)


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
    """Rows, tokens and cost of a job over its source rows (canonical messages)."""
    half_cap = text_jobs.max_output_tokens(job.stored) // 2
    if job.kind == pb.JOB_KIND_TEXT_DISTILLATION:
        prompts = text_jobs.prompts_of(job.stored)
        input_chars = sum(len(m[-1]["content"]) for m in source) * len(prompts)
        input_chars += sum(len(p["text"]) for p in prompts) * len(source)
        rows = len(source) * len(prompts)
    else:
        rows = int(job.stored.get("parameters", {}).get("augment_count", 0))
        pair_chars = sum(len(m[1]["content"]) + len(m[2]["content"]) for m in source) / max(1, len(source))
        input_chars = int(rows * (len(text_jobs.AUGMENT_INSTRUCTIONS) + text_jobs.EXAMPLES_SHOWN * pair_chars))
    input_tokens = input_chars // CHARS_PER_TOKEN
    output_tokens = rows * half_cap
    return {
        "rows": rows,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "estimated_cost_usd": prices.cost_usd(job.provider, job.model, input_tokens, output_tokens),
        "price_known": prices.price_of(job.provider, job.model) is not None,
    }
