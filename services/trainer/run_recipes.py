"""Recipes: vetted training presets by kind of task (docs/recipes.md).

``run_recipes.toml`` beside this module holds the platform's; an operator's file (``DISTILLERY_RECIPES_FILE``)
adds recipes, or replaces one by name. A run created with ``recipe`` takes from it what the request leaves
at 0 or empty (``apply``): the request's own fields win.

A recipe's sft fields in ``AUTO_FIELDS`` may be "auto": sized from the run's split once the run has it
(``measure`` and ``sized``), recorded on the run's request with the names of those sized (``auto_fields``):

- ``max_seq_length``: the longest row of the train and eval splits, its tokens estimated from its canonical
  JSON line as ``ceil(bytes / 2) + 32`` (byte-level BPE averages about 4 bytes a token on English; the JSON
  keys and the 32 cover the chat template), rounded up to a multiple of 64, at most the recipe's limit;
- ``epochs``: 3, or more for a small set so that the run sees at least 320 rows (``ceil(320 / rows)``), or
  fewer for a big one so that it sees at most 50,000 (``50,000 // rows``, at least 1); at most the limit;
- ``max_steps``: the epochs' optimizer steps (``epochs * ceil(ceil(rows / (batch_size * workers)) /
  gradient_accumulation_steps)``), at most the limit;
- ``eval_every_steps``: about ten evals a run (``ceil(steps / 10)``);
- ``checkpoint_every_steps``: at every eval, so the best eval's checkpoint is there to keep.

Compute: the request's, which a worker group of the deployment must offer (else CreateRun refuses it), else
the recipe's, capped to the group the run gets, else the group's (``worker_groups``: ``resolve_compute``; what
the job gets, ``job_compute`` and ``job_resources``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from minio.error import S3Error

from distillery.common.v1 import common_pb2
from distillery.trainer.v1 import trainer_pb2 as pb
from services.common.errors import InvalidArgument, Unavailable
from services.common.ids import check_text
from services.common.objects import ObjectStore
from services.trainer.recipes.grpo_settings import resolve_grpo
from services.trainer.recipes.sft_settings import UPPER_BOUNDS, SftSettings, resolve_sft

# The run's compute, re-exported: where the trainer's callers have always found it.
from services.trainer.worker_groups import Deployment as Deployment
from services.trainer.worker_groups import WorkerGroup as WorkerGroup
from services.trainer.worker_groups import job_compute as job_compute
from services.trainer.worker_groups import job_resources as job_resources
from services.trainer.worker_groups import resolve_compute as resolve_compute

DEFAULT_FILE = Path(__file__).with_name("run_recipes.toml")
AUTO = "auto"
AUTO_FIELDS = ("max_seq_length", "epochs", "max_steps", "eval_every_steps", "checkpoint_every_steps")
DEFAULT_LIMITS = {"max_seq_length": 2048, "epochs": 20, "max_steps": 5000}  # where a recipe sets none
TASKS = ("classification", "generation", "tool-calling", "speech", "ocr")
BYTES_PER_TOKEN, TEMPLATE_TOKENS, SEQ_MULTIPLE = 2, 32, 64
BASE_EPOCHS, MIN_ROWS_SEEN, MAX_ROWS_SEEN = 3, 320, 50_000
EVALS_PER_RUN = 10
COMPUTE_LIMITS = {"workers": 256, "cpus_per_worker": 1024, "gpus_per_worker": 16}
MAX_GPU_TYPE_CHARS = 64
_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
_KEYS = ("description", "task", "paths", "base_model", "available", "sft", "limits", "grpo", "compute")


def path_name(path: int) -> str:
    name = common_pb2.TrainingPath.Name(common_pb2.TrainingPath.ValueType(path))
    return name.removeprefix("TRAINING_PATH_").lower().replace("_", "-")


PATHS = {path_name(value): value for value in common_pb2.TrainingPath.values() if value}
M = TypeVar("M", bound=Message)


@dataclass
class Recipe:
    """One recipe, as a [recipes.NAME] table of a recipes file holds it."""

    name: str = field(metadata={"help": "What runs ask for (`--recipe NAME`): lowercase letters, digits and '-'."})
    base_model: str = field(
        default="", metadata={"help": "Required: the student, a hub id (org/name) or a directory the trainer allows."}
    )
    description: str = field(default="", metadata={"help": "What the recipe is for, in a sentence."})
    task: str = field(default="", metadata={"help": f"The kind of task: one of {', '.join(TASKS)}."})
    paths: list[str] = field(default_factory=list, metadata={"help": "The training paths it trains; the first is "
                             "a run's path when the request names none."})  # fmt: skip
    available: bool = field(default=True, metadata={"help": "False for a slot whose path does not train yet."})
    sft: dict[str, Any] = field(default_factory=dict, metadata={"help": "SFT settings; the fields of AUTO_FIELDS "
                                "may be \"auto\" (sized from the run's split)."})  # fmt: skip
    limits: dict[str, int] = field(default_factory=dict, metadata={"help": "The most an auto value may be (of "
                                   f"{', '.join(DEFAULT_LIMITS)}; else {DEFAULT_LIMITS})."})  # fmt: skip
    grpo: dict[str, Any] = field(default_factory=dict, metadata={"help": "GRPO settings, for SFT + RL runs."})
    compute: dict[str, Any] = field(default_factory=dict, metadata={"help": "workers, cpus_per_worker, "
                                    "gpus_per_worker, gpu_type (\"L4\"); capped to the run's group."})  # fmt: skip
    source: str = field(default="", metadata={"help": "The file it came from, named in its errors."})

    def _bad(self, where: str, problem: str) -> InvalidArgument:
        return InvalidArgument(f"{self.source or 'recipes'}: recipe {self.name!r}: {where}: {problem}",
                               field=f"recipes.{self.name}.{where}")  # fmt: skip

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise self._bad("name", "give 1-64 lowercase letters, digits or '-', starting with a letter or digit")
        for key in ("base_model", "description", "task"):
            if not isinstance(getattr(self, key), str):
                raise self._bad(key, f"must be a string, not {getattr(self, key)!r}")
        if not self.base_model.strip():
            raise self._bad("base_model", "is required: a hub id such as HuggingFaceTB/SmolLM2-135M-Instruct")
        if self.task not in TASKS:
            raise self._bad("task", f"{self.task!r} is not a task: give one of {', '.join(TASKS)}")
        if not isinstance(self.paths, list) or not self.paths or not set(self.paths) <= set(PATHS):
            raise self._bad("paths", f"{self.paths!r}: give a list of one or more of {', '.join(PATHS)}")
        if not isinstance(self.available, bool):
            raise self._bad("available", f"must be true or false, not {self.available!r}")
        for key in ("sft", "limits", "grpo", "compute"):
            if not isinstance(getattr(self, key), dict):
                raise self._bad(key, f"must be a table ([recipes.{self.name}.{key}]), not {getattr(self, key)!r}")
        known = {f.name for f in dataclasses.fields(SftSettings)}
        for key, value in self.sft.items():
            if key not in known:
                raise self._bad(f"sft.{key}", f"is not an SFT setting: give some of {', '.join(sorted(known))}")
            if value == AUTO and key not in AUTO_FIELDS:
                raise self._bad(f"sft.{key}", f'cannot be "auto": only {", ".join(AUTO_FIELDS)} can')
        try:  # each as the wire holds it (its types), then as a request's (its ranges)
            message(pb.SftSettings, self.settings(), "sft")
            resolve_sft(self.settings())
            message(pb.GrpoSettings, self.grpo, "grpo")
            resolve_grpo(self.grpo, full_finetune=self.sft.get("full_finetune") is True)
            check_compute(message(pb.Compute, self.compute, "compute"))
        except InvalidArgument as err:
            raise self._bad(err.field, err.message) from None
        for key, value in self.limits.items():
            if key not in DEFAULT_LIMITS:
                raise self._bad(f"limits.{key}", f"is not a limit: give some of {', '.join(DEFAULT_LIMITS)}")
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= UPPER_BOUNDS[key]:
                raise self._bad(f"limits.{key}", f"{value!r}: give a whole number from 1 to {UPPER_BOUNDS[key]:,}")

    @property
    def auto_fields(self) -> list[str]:
        return [name for name in AUTO_FIELDS if self.sft.get(name) == AUTO]

    def settings(self) -> dict[str, Any]:
        """The recipe's sft values that are not "auto"."""
        return {key: value for key, value in self.sft.items() if value != AUTO}

    def limit(self, name: str) -> int:
        return self.limits.get(name) or DEFAULT_LIMITS.get(name) or UPPER_BOUNDS[name]

    def to_proto(self) -> pb.Recipe:
        """The recipe on the wire: an auto field's value in ``sft`` is the most the sizing picks."""
        sft = {key: (self.limit(key) if key in DEFAULT_LIMITS else 0) if value == AUTO else value
               for key, value in self.sft.items()}  # fmt: skip
        return pb.Recipe(
            name=self.name, description=self.description, task=self.task, base_model=self.base_model,
            paths=[PATHS[p] for p in self.paths], auto_fields=self.auto_fields, available=self.available,
            sft=message(pb.SftSettings, sft, "sft"), grpo=message(pb.GrpoSettings, self.grpo, "grpo"),
            compute=message(pb.Compute, self.compute, "compute"),
        )  # fmt: skip


_KINDS = {FieldDescriptor.CPPTYPE_BOOL: "true or false", FieldDescriptor.CPPTYPE_STRING: "a string",
          FieldDescriptor.CPPTYPE_DOUBLE: "a number", FieldDescriptor.CPPTYPE_FLOAT: "a number"}  # fmt: skip


def message(cls: type[M], values: dict[str, Any], where: str) -> M:
    """``cls`` with ``values``; INVALID_ARGUMENT naming ``where.<key>`` for a key it lacks or a value of
    another type (``3.0`` where a whole number goes)."""
    out, fields = cls(), cls.DESCRIPTOR.fields_by_name
    for key, value in values.items():
        if key not in fields:
            raise InvalidArgument(f"{where}.{key} is not a field: give some of {', '.join(fields)}",
                                  field=f"{where}.{key}")  # fmt: skip
        try:
            setattr(out, key, value)
        except (TypeError, ValueError):
            kind = _KINDS.get(fields[key].cpp_type, "a whole number")
            raise InvalidArgument(f"{where}.{key}={value!r}: give {kind}", field=f"{where}.{key}") from None
    return out


def read(path: Path) -> dict[str, Recipe]:
    """The recipes of one file; InvalidArgument naming the file, the recipe and the field for bad data."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise InvalidArgument(f"{path}: cannot read this recipes file ({err}); check DISTILLERY_RECIPES_FILE") from None
    except tomllib.TOMLDecodeError as err:
        raise InvalidArgument(f"{path}: not valid TOML ({err}); docs/recipes.md shows the format") from None
    tables = data.get("recipes")
    if set(data) != {"recipes"} or not isinstance(tables, dict):
        raise InvalidArgument(f"{path}: a recipes file holds [recipes.NAME] tables only (found {sorted(data)}); "
                              "docs/recipes.md shows the format")  # fmt: skip
    recipes = {}
    for name, table in tables.items():
        if not isinstance(table, dict):
            raise InvalidArgument(f"{path}: recipes.{name} must be a table ([recipes.{name}])")
        if unknown := sorted(set(table) - set(_KEYS)):
            raise InvalidArgument(f"{path}: recipe {name!r}: {', '.join(unknown)} is not a recipe key: give some "
                                  f"of {', '.join(_KEYS)}", field=f"recipes.{name}.{unknown[0]}")  # fmt: skip
        recipes[name] = Recipe(name=name, source=str(path), **table)
    return recipes


@functools.cache
def defaults() -> dict[str, Recipe]:
    """The platform's recipes (run_recipes.toml)."""
    return read(DEFAULT_FILE)


def load(operator_file: str = "") -> dict[str, Recipe]:
    """The platform's recipes, with an operator's file's added, or replacing those of the same name."""
    return {**defaults(), **(read(Path(operator_file).expanduser()) if operator_file else {})}


def check_compute(compute: pb.Compute, where: str = "compute") -> None:
    """Each field in its range (0: the recipe's, else the deployment's); INVALID_ARGUMENT naming it."""
    for name, most in COMPUTE_LIMITS.items():
        value = getattr(compute, name)
        if not (math.isfinite(value) and 0 <= value <= most):
            raise InvalidArgument(f"{where}.{name}={value} is out of range: give 0 (the recipe's, else the "
                                  f"deployment's) to {most}", field=f"{where}.{name}")  # fmt: skip
    check_text(compute.gpu_type, f"{where}.gpu_type", MAX_GPU_TYPE_CHARS)


def apply(recipe: Recipe, request: pb.CreateRunRequest) -> tuple[pb.CreateRunRequest, list[str]]:
    """The request with the recipe's values where it has 0 or empty (its path, student, sft, grpo of an SFT + RL
    run, compute), and the recipe's auto fields it left at 0, to be sized from the split."""
    if not recipe.available:
        raise InvalidArgument(f"recipe {recipe.name!r} is a slot for the {', '.join(recipe.paths)} path, which "
                              "arrives in a later version: `distillery recipes list` shows those that train today",
                              field="recipe")  # fmt: skip
    out = pb.CreateRunRequest()
    out.CopyFrom(request)
    if not out.path:
        out.path = PATHS[recipe.paths[0]]
    elif path_name(out.path) not in recipe.paths:
        raise InvalidArgument(f"recipe {recipe.name!r} is for {', '.join(recipe.paths)} runs, not "
                              f"{path_name(out.path)}: pick a recipe for the path (`distillery recipes list`)",
                              field="recipe")  # fmt: skip
    out.student_model = out.student_model or recipe.base_model
    filled: list[tuple[Any, dict[str, Any]]] = [(out.sft, recipe.settings()), (out.compute, recipe.compute)]
    if out.mode == common_pb2.TRAINING_MODE_SFT_RL:
        filled.append((out.grpo, recipe.grpo))
    for message, values in filled:
        for key, value in values.items():
            if not getattr(message, key):
                setattr(message, key, value)
    return out, [name for name in recipe.auto_fields if not getattr(request.sft, name)]


@dataclass(frozen=True)
class SplitSize:
    """What the sizing reads from a split: its rows, and its longest canonical line in bytes."""

    train_rows: int
    eval_rows: int
    longest_bytes: int

    @property
    def longest_tokens(self) -> int:
        return math.ceil(self.longest_bytes / BYTES_PER_TOKEN) + TEMPLATE_TOKENS


def _lines(store: ObjectStore, key: str) -> tuple[int, int]:
    """The non-empty lines of an object and the longest's bytes, read as a stream."""
    try:
        response = store.client.get_object(store.bucket, key)
    except S3Error as err:
        raise Unavailable(f"cannot read the split {key} ({err.code})") from None
    rows = longest = current = 0
    try:
        for chunk in response.stream(1 << 20):
            start = 0
            while (end := chunk.find(b"\n", start)) != -1:
                current += end - start
                rows, longest, current, start = rows + bool(current), max(longest, current), 0, end + 1
            current += len(chunk) - start
    finally:
        response.close()
        response.release_conn()
    return rows + bool(current), max(longest, current)


def measure(store: ObjectStore, split: dict[str, Any]) -> SplitSize:
    train_rows, train_longest = _lines(store, split["train_key"])
    eval_rows, eval_longest = _lines(store, split["eval_key"])
    return SplitSize(train_rows, eval_rows, max(train_longest, eval_longest))


def sized(sft: dict[str, Any], auto: list[str], limits: dict[str, int], size: SplitSize, workers: int = 1) -> dict:
    """The values of the ``auto`` fields of resolved ``sft`` settings, by the rules in this module's docstring."""
    limit = {name: limits.get(name) or DEFAULT_LIMITS.get(name) or UPPER_BOUNDS[name] for name in AUTO_FIELDS}
    rows, values = max(size.train_rows, 1), {}
    if "max_seq_length" in auto:
        rounded = math.ceil(size.longest_tokens / SEQ_MULTIPLE) * SEQ_MULTIPLE
        values["max_seq_length"] = max(min(rounded, limit["max_seq_length"]), 1)
    epochs = sft["epochs"]
    if "epochs" in auto:
        epochs = BASE_EPOCHS
        if rows * BASE_EPOCHS < MIN_ROWS_SEEN:
            epochs = math.ceil(MIN_ROWS_SEEN / rows)
        elif rows * BASE_EPOCHS > MAX_ROWS_SEEN:
            epochs = max(MAX_ROWS_SEEN // rows, 1)
        epochs = values["epochs"] = min(epochs, limit["epochs"])
    per_epoch = math.ceil(math.ceil(rows / (sft["batch_size"] * workers)) / sft["gradient_accumulation_steps"])
    steps = sft["max_steps"] or epochs * max(per_epoch, 1)
    if "max_steps" in auto:
        steps = values["max_steps"] = min(epochs * max(per_epoch, 1), limit["max_steps"])
    every = sft["eval_every_steps"] if sft["eval_every_steps"] > 0 else max(math.ceil(steps / EVALS_PER_RUN), 1)
    if "eval_every_steps" in auto:
        values["eval_every_steps"] = every
    if "checkpoint_every_steps" in auto:
        values["checkpoint_every_steps"] = every
    return values


def size_request(request: dict[str, Any], size: SplitSize, workers: int) -> dict[str, Any]:
    """A run's stored request with its auto fields sized (``sized``) and checked; what it had before is kept in
    ``request["sized"]`` with what they were sized from, so ``as_created`` can give the request back."""
    sft = dict(request["sft"])
    values = sized(sft, list(request.get("auto_fields", [])), request.get("auto_limits", {}), size, workers)
    resolved = dataclasses.asdict(resolve_sft({**sft, **values}))
    record = {"train_rows": size.train_rows, "eval_rows": size.eval_rows, "longest_row_tokens": size.longest_tokens,
              "workers": workers, "sft_as_created": request["sft"]}  # fmt: skip
    return {**request, "sft": resolved, "sized": record}


def as_created(request: dict[str, Any]) -> dict[str, Any]:
    """The request as ``run_requests.checked`` stored it, before sizing (for the idempotency key's check)."""
    if "sized" not in request:
        return request
    return {**{k: v for k, v in request.items() if k != "sized"}, "sft": request["sized"]["sft_as_created"]}
