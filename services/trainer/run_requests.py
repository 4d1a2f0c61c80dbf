"""Checks of a CreateRunRequest before anything is stored or reserved: each refusal
names the field and says what to give instead."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from google.protobuf import json_format

from distillery.common.v1 import common_pb2
from distillery.teacher.v1 import teacher_pb2
from distillery.trainer.v1 import trainer_pb2 as pb
from services.common.errors import InvalidArgument, NotFound
from services.common.ids import check_count, check_id, check_text
from services.trainer import media_requests, rubric_runs, run_recipes
from services.trainer.peers import Peers
from services.trainer.recipes.grpo_settings import resolve_grpo
from services.trainer.recipes.sft_settings import resolve_sft
from services.trainer.students import StudentSources, registered_id

DEFAULT_EVAL_FRACTION = 0.1
# The limits of a request's strings and lists (docs/api.md, "Limits of a run request"); the teacher checks
# the generation settings, and may have tighter limits of its own.
MAX_TEACHER_CHARS = 256
MAX_IDEMPOTENCY_KEY_CHARS = 256
MAX_LANGUAGE_CHARS = 16
MAX_NAME_CHARS = 128
MAX_PROMPT_CHARS = 32_768
MAX_TOOLS = 64
MAX_SYSTEM_PROMPTS = 100
MAX_SEED_PROMPTS = 10_000
MAX_OBJECTIVES = 100
MAX_TOOL_RESPONSES = 1_000
MAX_AUGMENT_COUNT = 100_000
# The recipe a run of the path uses when it names none: its defaults (student, settings) suit the path's models.
PATH_RECIPES = {common_pb2.TRAINING_PATH_FINETUNE_ASR: "speech", common_pb2.TRAINING_PATH_FINETUNE_OCR: "ocr"}
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
PATH_NAMES = {
    common_pb2.TRAINING_PATH_DISTILL_TOOLS: "distill-tools",
    common_pb2.TRAINING_PATH_DISTILL_TEXT: "distill-text",
    common_pb2.TRAINING_PATH_FINETUNE_TEXT: "finetune-text",
    common_pb2.TRAINING_PATH_FINETUNE_ASR: "finetune-asr",
    common_pb2.TRAINING_PATH_FINETUNE_OCR: "finetune-ocr",
}


def _check_teacher(request: pb.CreateRunRequest) -> None:
    """Distillation and augmentation need a teacher; augmentation only goes with finetune-text."""
    distill = request.path == common_pb2.TRAINING_PATH_DISTILL_TEXT
    if request.augment_count and distill:
        raise InvalidArgument("augment_count is for finetune-text runs; distill-text generates all its pairs",
                              field="augment_count")  # fmt: skip
    if not (distill or request.augment_count):
        return
    if not request.teacher:
        raise InvalidArgument("a teacher is required to generate pairs: --teacher PROVIDER:MODEL (e.g. "
                              "platform:smollm2 or openai:gpt-4.1-mini)", field="teacher")  # fmt: skip
    if not 0.0 <= request.max_failed_fraction <= 1.0:
        raise InvalidArgument(f"max_failed_fraction must be between 0 and 1 (got {request.max_failed_fraction})",
                              field="max_failed_fraction")  # fmt: skip


def _check_tools(request: pb.CreateRunRequest) -> None:
    """Distill-tools trains on a tool-calls dataset as it is, or on trajectories a teacher writes
    for the active tools from seed prompts."""
    if request.augment_count:
        raise InvalidArgument("augment_count is for finetune-text runs", field="augment_count")
    if request.dataset_id:
        if request.teacher:
            raise InvalidArgument("a tool-calls dataset is trained on as it is: leave out the teacher, or the "
                                  "dataset to have the teacher write trajectories", field="teacher")  # fmt: skip
        return
    if not request.teacher:
        raise InvalidArgument("a teacher is required to write trajectories: --teacher PROVIDER:MODEL (or give a "
                              "tool-calls dataset with --dataset)", field="teacher")  # fmt: skip
    if not request.tool_ids:
        raise InvalidArgument("distill-tools needs the tools to call: --tool ID for each (see `distillery tools "
                              "list`; import or describe them first)", field="tool_ids")  # fmt: skip
    if not [p for p in request.seed_prompts if p.strip()]:
        raise InvalidArgument("distill-tools needs at least one seed prompt: a request a user would make "
                              "(--seed-prompt TEXT)", field="seed_prompts")  # fmt: skip
    if request.eval_dataset_id:
        raise InvalidArgument("a distill-tools run holds out a share of the generated trajectories for eval: "
                              "give eval_fraction, not eval_dataset_id", field="eval_dataset_id")  # fmt: skip
    if not 0.0 <= request.max_failed_fraction <= 1.0:
        raise InvalidArgument(f"max_failed_fraction must be between 0 and 1 (got {request.max_failed_fraction})",
                              field="max_failed_fraction")  # fmt: skip


def _check_bounds(request: pb.CreateRunRequest) -> None:
    """Every field in its range (docs/api.md, "Limits of a run request"): enums the server knows, ids
    shaped like ids, strings and lists of bounded length. Each refusal names the field."""
    if request.mode not in common_pb2.TrainingMode.values():
        raise InvalidArgument(f"mode {request.mode} is not a training mode: give sft or sft-rl", field="mode")
    check_id(request.dataset_id, "dataset_id")
    check_id(request.eval_dataset_id, "eval_dataset_id")
    check_text(request.teacher, "teacher", MAX_TEACHER_CHARS)
    check_text(request.idempotency_key, "idempotency_key", MAX_IDEMPOTENCY_KEY_CHARS)
    check_text(request.language, "language", MAX_LANGUAGE_CHARS)
    check_count(request.tool_ids, "tool_ids", MAX_TOOLS)
    for i, tool_id in enumerate(request.tool_ids):
        check_id(tool_id, f"tool_ids[{i}]")
    check_count(request.system_prompts, "system_prompts", MAX_SYSTEM_PROMPTS)
    for i, prompt in enumerate(request.system_prompts):
        check_text(prompt.name, f"system_prompts[{i}].name", MAX_NAME_CHARS)
        _check_length(prompt.text, f"system_prompts[{i}].text", MAX_PROMPT_CHARS)
    check_count(request.seed_prompts, "seed_prompts", MAX_SEED_PROMPTS)
    for i, text in enumerate(request.seed_prompts):
        _check_length(text, f"seed_prompts[{i}]", MAX_PROMPT_CHARS)
    check_count(request.objectives, "objectives", MAX_OBJECTIVES)
    for i, text in enumerate(request.objectives):
        _check_length(text, f"objectives[{i}]", MAX_PROMPT_CHARS)
    check_count(request.tool_responses, "tool_responses", MAX_TOOL_RESPONSES)
    check_text(request.rubric, "rubric", MAX_NAME_CHARS)
    run_recipes.check_compute(request.compute)
    if not 0 <= request.augment_count <= MAX_AUGMENT_COUNT:
        raise InvalidArgument(f"augment_count must be 0 to {MAX_AUGMENT_COUNT} (got {request.augment_count})",
                              field="augment_count")  # fmt: skip


def _check_length(text: str, field: str, max_chars: int) -> None:
    if len(text) > max_chars:
        raise InvalidArgument(f"{field} is {len(text)} characters long: give at most {max_chars}", field=field)


def checked(
    request: pb.CreateRunRequest,
    students: StudentSources | None = None,
    recipes: dict[str, run_recipes.Recipe] | None = None,
    deployment: run_recipes.Deployment | None = None,
) -> dict[str, Any]:
    """The request as stored with the run (proto JSON, snake_case), defaults filled in: its recipe's values
    where it has none, the recipe's auto fields it left at 0 (``auto_fields``, sized later), and its compute as
    a worker group of the deployment gives it (a request no group can satisfy is refused: ``worker_groups``).
    ``students`` is where the deployment allows student models from (default: the hub only), ``recipes`` the
    recipes it knows (default: the platform's), ``deployment`` what its jobs get."""
    if request.path not in common_pb2.TrainingPath.values():
        raise InvalidArgument(f"path {request.path} is not a training path: give one of "
                              f"{', '.join(PATH_NAMES.values())}", field="path")  # fmt: skip
    auto: list[str] = []
    limits: dict[str, int] = {}
    original_student, asked_compute = request.student_model, pb.Compute()
    asked_compute.CopyFrom(request.compute)  # a requirement; what a recipe adds to it is a preference
    if not request.recipe and request.path in PATH_RECIPES:
        request = _with_default_recipe(request)
    if request.recipe:  # first: a recipe may give the path, the student and the settings checked below
        request, auto, limits = _with_recipe(request, run_recipes.defaults() if recipes is None else recipes)
    if request.path == common_pb2.TRAINING_PATH_UNSPECIFIED:
        raise InvalidArgument("path is required (finetune-text)", field="path")
    tools = request.path == common_pb2.TRAINING_PATH_DISTILL_TOOLS
    _check_bounds(request)
    rubric_runs.check_request(request, request.path)
    media = request.path in media_requests.MEDIA_PATHS  # finetune-asr, finetune-ocr
    media_fields = media_requests.checked(request)
    if tools:
        _check_tools(request)
    elif not media:
        _check_teacher(request)
    if request.mode == common_pb2.TRAINING_MODE_SFT_RL and not tools:
        raise InvalidArgument("SFT + RL (GRPO) is only available for the tool-calling distillation path", field="mode")
    if request.HasField("grpo") and request.mode != common_pb2.TRAINING_MODE_SFT_RL:
        raise InvalidArgument("GRPO settings need the SFT + RL mode (--mode sft-rl)", field="mode")
    if not request.dataset_id and not tools:
        kind = "an input-only" if request.path == common_pb2.TRAINING_PATH_DISTILL_TEXT else "a pairs"
        kind = {common_pb2.TRAINING_PATH_FINETUNE_ASR: "an asr", common_pb2.TRAINING_PATH_FINETUNE_OCR: "an ocr"}.get(
            request.path, kind
        )
        raise InvalidArgument(f"dataset_id is required: upload {kind} dataset and pass its id", field="dataset_id")
    student = _checked_student(request, students, given=original_student)
    if request.eval_dataset_id and request.path == common_pb2.TRAINING_PATH_DISTILL_TEXT:
        raise InvalidArgument("a distill-text run holds out a share of the generated pairs for eval: give "
                              "eval_fraction, not eval_dataset_id", field="eval_dataset_id")  # fmt: skip
    if request.eval_dataset_id and request.eval_fraction:
        raise InvalidArgument("give eval_dataset_id or eval_fraction, not both", field="eval_fraction")
    if not 0.0 <= request.eval_fraction < 1.0:
        raise InvalidArgument(
            f"eval_fraction must be between 0 and 1 (got {request.eval_fraction}); 0.1 holds out 10%",
            field="eval_fraction",
        )
    if request.model_name and not _MODEL_NAME.match(request.model_name):
        raise InvalidArgument(
            "model_name must be 1-64 characters of letters, digits, '.', '_' or '-', starting with a letter or digit",
            field="model_name",
        )
    stored = json_format.MessageToDict(request, preserving_proto_field_name=True)
    stored.pop("auto_fields", None)  # output only: what the recipe leaves to sizing
    if auto:
        stored["auto_fields"], stored["auto_limits"] = auto, limits
    stored["compute"] = run_recipes.resolve_compute(
        asked_compute, deployment or run_recipes.Deployment(), request.compute
    )
    rl = request.mode == common_pb2.TRAINING_MODE_SFT_RL
    stored["mode"] = common_pb2.TrainingMode.Name(
        common_pb2.TRAINING_MODE_SFT_RL if rl else common_pb2.TRAINING_MODE_SFT
    )
    stored["student_model"] = student
    stored.update(media_fields)
    if not request.eval_dataset_id:
        stored["eval_fraction"] = request.eval_fraction or DEFAULT_EVAL_FRACTION
    sft = resolve_sft(json_format.MessageToDict(request.sft, preserving_proto_field_name=True))
    stored["sft"] = dataclasses.asdict(sft)
    stored.pop("grpo", None)
    if rl:
        grpo = resolve_grpo(
            json_format.MessageToDict(request.grpo, preserving_proto_field_name=True), full_finetune=sft.full_finetune
        )
        stored["grpo"] = dataclasses.asdict(grpo)
    return stored


def _with_recipe(
    request: pb.CreateRunRequest, recipes: dict[str, run_recipes.Recipe]
) -> tuple[pb.CreateRunRequest, list[str], dict[str, int]]:
    """The request with its recipe applied (``run_recipes.apply``), the auto fields and their limits."""
    check_text(request.recipe, "recipe", MAX_NAME_CHARS)
    recipe = recipes.get(request.recipe)
    if recipe is None:
        raise InvalidArgument(f"recipe {request.recipe!r} is not a recipe here: give one of "
                              f"{', '.join(sorted(recipes))} (`distillery recipes list`)", field="recipe")  # fmt: skip
    applied, auto = run_recipes.apply(recipe, request)
    return applied, auto, {name: recipe.limit(name) for name in auto if name in run_recipes.DEFAULT_LIMITS}


def _with_default_recipe(request: pb.CreateRunRequest) -> pb.CreateRunRequest:
    """The request naming its path's recipe (``PATH_RECIPES``)."""
    out = pb.CreateRunRequest()
    out.CopyFrom(request)
    out.recipe = PATH_RECIPES[request.path]
    return out


def _checked_student(request: pb.CreateRunRequest, students: StudentSources | None, given: str) -> str:
    """The student as stored; a recipe's base model the deployment does not allow is refused naming ``recipe``."""
    try:
        return (students or StudentSources()).check(request.student_model)
    except InvalidArgument as err:
        if given or not request.recipe:
            raise
        raise InvalidArgument(
            f"recipe {request.recipe!r}: its base model is refused here ({err.message}); give "
            "a student_model (--student) this deployment allows",
            field="recipe",
        ) from None


def generates(path: int, stored: dict[str, Any]) -> bool:
    """Whether a run (its path and its request as stored) has the teacher write rows first."""
    if path == common_pb2.TRAINING_PATH_DISTILL_TOOLS:
        return not stored.get("dataset_id")
    return path == common_pb2.TRAINING_PATH_DISTILL_TEXT or bool(stored.get("augment_count"))


def teacher_request(
    path: int, stored: dict[str, Any], run_id: str = "", source_key: str = ""
) -> teacher_pb2.CreateGenerationJobRequest:
    """The teacher's job for a run that generates: trajectories for the run's tools, answers to its
    inputs under each system prompt, or new pairs like those of its train split (``source_key``)."""
    job = teacher_pb2.CreateGenerationJobRequest(
        teacher=stored["teacher"], run_id=run_id, max_failed_fraction=stored.get("max_failed_fraction", 0.0)
    )
    json_format.ParseDict(stored.get("generation", {}), job.parameters)
    if path == common_pb2.TRAINING_PATH_DISTILL_TOOLS:
        job.kind = teacher_pb2.JOB_KIND_TOOL_TRAJECTORIES
        job.tool_ids.extend(stored.get("tool_ids", []))
        job.seed_prompts.extend(stored.get("seed_prompts", []))
        job.objectives.extend(stored.get("objectives", []))
        for example in stored.get("tool_responses", []):
            job.tool_responses.add(**example)
    elif path == common_pb2.TRAINING_PATH_DISTILL_TEXT:
        job.kind = teacher_pb2.JOB_KIND_TEXT_DISTILLATION
        job.dataset_id = stored["dataset_id"]
        for prompt in stored.get("system_prompts", []):
            job.system_prompts.add(name=prompt["name"], text=prompt["text"])
    else:
        job.kind = teacher_pb2.JOB_KIND_AUGMENTATION
        job.source_key = source_key
        job.parameters.augment_count = int(stored["augment_count"])
    return job


async def check_with_teacher(peers: Peers, tenant_id: str, path: int, stored: dict[str, Any]) -> None:
    """The teacher service checks the settings of the job a run will ask of it (CheckGenerationJob), so a
    bad teacher name or generation setting is refused when the run is created; the refusal names the run's
    own field (``generation.temperature``, not the job's ``parameters.temperature``)."""
    if not generates(path, stored):
        return
    try:
        await peers.check_job(tenant_id, teacher_request(path, stored))
    except InvalidArgument as err:
        field = err.field
        if field == "parameters.augment_count":
            field = "augment_count"
        elif field.startswith("parameters."):
            field = "generation." + field.removeprefix("parameters.")
        raise InvalidArgument(err.message, field=field) from None


async def resolve_student(
    peers: Peers, tenant_id: str, stored: dict[str, Any], students: StudentSources | None, bucket: str
) -> None:
    """A run that trains one of the tenant's registered models further: ``stored["student_source"]`` says what
    its job starts from (``StudentSources.continued_from``). The model is looked up as the tenant (the registry
    answers NOT_FOUND for another tenant's), and a model that is not there is the request's fault."""
    model_id = registered_id(stored["student_model"])
    if model_id is None:
        return
    try:
        model = await peers.get_model(tenant_id, model_id)
    except NotFound:
        raise InvalidArgument(
            f"student_model {model_id!r}: you have no model with this id (`distillery models list` shows yours)",
            field="student_model",
        ) from None
    full = bool(stored["sft"].get("full_finetune"))
    stored["student_source"] = (students or StudentSources()).continued_from(model, bucket, full)
