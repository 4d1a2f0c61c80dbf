"""The one job spec: what the trainer hands a recipe's Ray job, as ``<output_prefix>/spec.json``.

The pipeline builds a ``JobSpec`` from the run and writes ``to_json()``; the recipe's
entrypoint (``python -m services.trainer.recipes.<name> --spec-key <key>``) reads it back with
``from_json`` and every stage reads its attributes. Imported by the trainer service, so it
stays light: no torch, transformers or ray.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from services.common.errors import InvalidArgument
from services.trainer.recipes.grpo_settings import GrpoSettings
from services.trainer.recipes.sft_settings import SftSettings

# The object beside spec.json holding the job's secrets (its S3 keys, its push token): the job's driver reads
# it through a presigned URL and deletes it (``services/trainer/job_access.py``).
SECRETS_NAME = "job-secrets.json"
START_KINDS = ("", "lora_adapter", "full_weights")
_TEXT_FIELDS = ("run_id", "tenant_id", "student_model", "train_key", "eval_key", "output_prefix")


@dataclass(frozen=True)
class JobSpec:
    """One training job of one run: its inputs, where it writes, its settings and its workers."""

    run_id: str = field(
        metadata={
            "help": "The run this job trains for; also its Ray Train run name, so a job submitted again for the "
            "same run finds its checkpoints."
        }
    )
    tenant_id: str = field(metadata={"help": "The tenant that owns the run (every key below is under its prefix)."})
    student_model: str = field(
        metadata={"help": "The model trained: a hub id or a directory the Ray workers can read."}
    )
    train_key: str = field(metadata={"help": "S3 key of the train split (canonical JSONL of the run's path)."})
    eval_key: str = field(metadata={"help": "S3 key of the eval split; no row of it is in the train split."})
    output_prefix: str = field(
        metadata={"help": "S3 prefix the job writes under: model/, result.json (last), error.json, checkpoints."}
    )
    sft: SftSettings = field(metadata={"help": "The resolved SFT settings (defaults filled in)."})
    grpo: GrpoSettings | None = field(
        default=None, metadata={"help": "The resolved GRPO settings of an SFT + RL run; None trains SFT only."}
    )
    num_workers: int = field(
        default=1, metadata={"help": "Ray Train workers; a recipe that must run on one says so in its log."}
    )
    use_gpu: bool = field(default=False, metadata={"help": "Give each worker GPUs (and train in bf16 where it can)."})
    cpus_per_worker: float = field(
        default=0.0,
        metadata={"help": "CPUs each worker asks Ray for; 0: a CPU job shares the largest node's CPUs among its "
                  "workers, a GPU job takes Ray's default."},
    )  # fmt: skip
    gpus_per_worker: int = field(default=0, metadata={"help": "GPUs each worker asks Ray for when use_gpu (0: one)."})
    gpu_type: str = field(
        default="", metadata={"help": "Ray's accelerator type the workers must run on (L4, A100...); empty: any."}
    )
    start_from: str = field(
        default="",
        metadata={
            "help": "S3 prefix of the artifacts of a registered model this job trains further (under the "
            "tenant's prefix); empty trains student_model as it is."
        },
    )
    start_kind: str = field(
        default="",
        metadata={
            "help": "What start_from holds: lora_adapter (an adapter over student_model) or full_weights; empty "
            "without start_from."
        },
    )
    rubric: dict[str, Any] | None = field(
        default=None,
        metadata={
            "help": "The run's rubric as stored (``Rubric.to_dict()``), checked on the eval set before training; "
            "mid-training evals then score generated answers with its programmatic criteria "
            "(eval_rubric_score, recipes/rubric_evals.py). None: evals score the eval loss."
        },
    )

    language: str = field(
        default="",
        metadata={
            "help": "A speech run's language override: every clip is transcribed in this language (a Whisper code or "
            "an ISO 639-1 one, mapped to Whisper's spelling: jv -> jw), whatever its row says; empty keeps each "
            "row's language and detects it from the audio where the row has none (recipes/speech.py)."
        },
    )
    train_vision: bool = field(
        default=False,
        metadata={
            "help": "An OCR run: train the vision encoder too (LoRA on it, or its weights in a full fine-tune); "
            "false keeps it frozen and trains the language side only (recipes/ocr.py)."
        },
    )
    image_mode: str = field(
        default="",
        metadata={
            "help": "An OCR run's resolution mode, for models that have modes (recipes/ocr.py lists them); empty: "
            "the model's default."
        },
    )

    def __post_init__(self) -> None:
        for name in _TEXT_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise InvalidArgument(
                    f"spec.{name} must be a non-empty string, not {value!r}: build the spec from the run "
                    "(services/trainer/pipeline.py) and submit the job again",
                    field=f"spec.{name}",
                )
        if not isinstance(self.sft, SftSettings):
            raise InvalidArgument(
                f"spec.sft must be SftSettings, not {type(self.sft).__name__}: read a spec with JobSpec.from_json",
                field="spec.sft",
            )
        if self.grpo is not None and not isinstance(self.grpo, GrpoSettings):
            raise InvalidArgument(
                f"spec.grpo must be GrpoSettings or None, not {type(self.grpo).__name__}: read a spec with "
                "JobSpec.from_json",
                field="spec.grpo",
            )
        if isinstance(self.num_workers, bool) or not isinstance(self.num_workers, int) or self.num_workers < 1:
            raise InvalidArgument(
                f"spec.num_workers must be a whole number of at least 1, not {self.num_workers!r}: set "
                "DISTILLERY_TRAIN_WORKERS on the trainer service",
                field="spec.num_workers",
            )
        if self.start_kind not in START_KINDS or bool(self.start_from) != bool(self.start_kind):
            raise InvalidArgument(
                f"spec.start_from {self.start_from!r} with start_kind {self.start_kind!r}: give both (start_kind one "
                f"of {', '.join(START_KINDS[1:])}) or neither",
                field="spec.start_kind",
            )
        if self.start_from and not self.start_from.startswith(f"tenants/{self.tenant_id}/"):
            raise InvalidArgument(
                f"spec.start_from {self.start_from!r} is not under the tenant's prefix tenants/{self.tenant_id}/",
                field="spec.start_from",
            )
        if self.rubric is not None and not (isinstance(self.rubric, dict) and self.rubric.get("criteria")):
            raise InvalidArgument("spec.rubric must be a stored rubric (its criteria) or null", field="spec.rubric")
        if not isinstance(self.language, str):
            raise InvalidArgument(
                f"spec.language must be a language code or empty, not {self.language!r}", field="spec.language"
            )
        if not isinstance(self.train_vision, bool):
            raise InvalidArgument(
                f"spec.train_vision must be true or false, not {self.train_vision!r}", field="spec.train_vision"
            )
        if not isinstance(self.image_mode, str):
            raise InvalidArgument(f"spec.image_mode must be a mode's name or empty, not {self.image_mode!r}",
                                  field="spec.image_mode")  # fmt: skip
        cpus, gpus = self.cpus_per_worker, self.gpus_per_worker
        if isinstance(cpus, bool) or not isinstance(cpus, int | float) or not 0 <= cpus < float("inf"):
            raise InvalidArgument(f"spec.cpus_per_worker must be a number >= 0, not {cpus!r}",
                                  field="spec.cpus_per_worker")  # fmt: skip
        if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 0 or not isinstance(self.gpu_type, str):
            raise InvalidArgument(f"spec.gpus_per_worker ({gpus!r}) must be a whole number >= 0 and spec.gpu_type "
                                  f"({self.gpu_type!r}) a string", field="spec.gpus_per_worker")  # fmt: skip
        if not isinstance(self.use_gpu, bool):
            raise InvalidArgument(f"spec.use_gpu must be true or false, not {self.use_gpu!r}", field="spec.use_gpu")

    def inputs(self) -> list[str]:
        """What the job reads besides its own prefix: its split's keys, and a folder (ending in /) it continues."""
        return [self.train_key, self.eval_key, *([f"{self.start_from}/"] if self.start_from else [])]

    def to_json(self) -> str:
        """The spec as spec.json holds it: the settings as objects of their fields, ``grpo`` null without RL."""
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str | bytes) -> JobSpec:
        try:
            data = json.loads(text)
        except ValueError as err:
            raise InvalidArgument(
                f"spec.json is not JSON ({err}): write it with JobSpec.to_json", field="spec"
            ) from None
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Any) -> JobSpec:
        """A spec from its JSON object; InvalidArgument naming the field when one is missing, unknown or wrong."""
        if not isinstance(data, dict):
            raise InvalidArgument("spec.json must hold a JSON object: write it with JobSpec.to_json", field="spec")
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise InvalidArgument(
                f"spec.json has fields a JobSpec does not: {', '.join(unknown)}; the trainer service and the Ray "
                "workers run different versions of Distillery: deploy one version to both",
                field=f"spec.{unknown[0]}",
            )
        required = [n for n, f in known.items() if f.default is dataclasses.MISSING]
        missing = [n for n in required if n not in data]
        if missing:
            raise InvalidArgument(
                f"spec.json lacks {', '.join(missing)}: write it with JobSpec.to_json", field=f"spec.{missing[0]}"
            )
        values = dict(data)
        values["sft"] = _settings(SftSettings, data["sft"], "sft")
        if data.get("grpo") is not None:
            values["grpo"] = _settings(GrpoSettings, data["grpo"], "grpo")
        return cls(**values)


def _settings(kind: type[Any], value: Any, name: str) -> Any:
    """``SftSettings`` or ``GrpoSettings`` from the object of its fields (they check their own values)."""
    if not isinstance(value, dict):
        raise InvalidArgument(f"spec.{name} must be an object of {kind.__name__} fields", field=f"spec.{name}")
    names = {f.name for f in dataclasses.fields(kind)}
    unknown = sorted(set(value) - names)
    if unknown:
        raise InvalidArgument(
            f"spec.{name} has fields {kind.__name__} does not: {', '.join(unknown)}; deploy one version of "
            "Distillery to the trainer service and the Ray workers",
            field=f"spec.{name}.{unknown[0]}",
        )
    return kind(**value)
