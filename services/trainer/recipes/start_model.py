"""The model a training job starts from: its student as named, or a registered model it trains further.

A run whose ``--student`` is one of the tenant's registered models has ``spec.start_from`` (the model's
artifacts in S3, readable by the job's scoped keys) and ``spec.start_kind``; ``spec.student_model`` is then
the base those artifacts were trained on. A recipe calls ``fetch`` (the artifacts into its scratch directory),
loads its tokenizer from ``tokenizer_source`` and its model with ``load``:

- no ``start_from``: the student, and the LoRA config of the run's settings (None for a full fine-tune) for
  the trainer to wrap it with;
- a LoRA adapter: the base with the adapter on it, trainable (it keeps its own rank and targets; the run's
  LoRA settings do not apply), or merged into the base when the run asks for a full fine-tune;
- full weights: the weights themselves, fully fine-tuned (the trainer refuses a LoRA run over them).

What the job saves is then what it saves for a fresh student: an adapter over ``student_model``, or full
weights, so ``Generate`` loads a continued model as it loads any other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from services.common.objects import ObjectStore
from services.trainer.recipes import failures, trl_configs
from services.trainer.recipes.failures import RunFailure
from services.trainer.recipes.job_spec import JobSpec


def fetch(spec: JobSpec, store: ObjectStore, workdir: Path) -> Path | None:
    """The registered model's artifacts in ``workdir/start``, or None when the job trains its student as it is."""
    if not spec.start_from:
        return None
    directory = workdir / "start"
    store.download_prefix(f"{spec.start_from}/", directory)
    if not any((directory / name).exists() for name in ("config.json", "adapter_config.json")):
        raise RunFailure(
            failures.UNKNOWN_MODEL,
            f"the registered model this run trains further has no artifacts at {spec.start_from}/ any more (was it "
            "deleted?): train its base model instead",
            "student_model",
        )
    return directory


def tokenizer_source(spec: JobSpec, start: Path | None) -> str:
    """Where the tokenizer is: saved with the registered model's artifacts, else the student's own."""
    return str(start) if start is not None else spec.student_model


def load(spec: JobSpec, start: Path | None, dtype: Any) -> tuple[Any, Any]:
    """The model to train and the LoRA config the trainer wraps it with (None: it is already what trains)."""
    from transformers import AutoModelForCausalLM

    if start is None:
        return AutoModelForCausalLM.from_pretrained(spec.student_model, dtype=dtype), trl_configs.lora_config(spec.sft)
    if spec.start_kind == "full_weights":
        return AutoModelForCausalLM.from_pretrained(start, dtype=dtype), None
    from peft import PeftModel

    base = AutoModelForCausalLM.from_pretrained(spec.student_model, dtype=dtype)
    if spec.sft.full_finetune:
        return PeftModel.from_pretrained(base, start).merge_and_unload(), None
    return PeftModel.from_pretrained(base, start, is_trainable=True), None
