"""The model card: one markdown page (an export's ``README.md``, ``GetModel``'s ``card``) that records what a
registered model is and how it was made: base model, training path, recipe, data (dataset ids and row
counts), settings, eval figures, when, and how to load it.

Everything comes from the model's registry row: its ``training_config`` is what the recipe wrote
(``training_config.json``: the sft/grpo settings, row counts) plus what the trainer adds when it registers
the model (``recipe``, ``data``: the dataset ids and split).
"""

from __future__ import annotations

import math
from typing import Any

from distillery.common.v1 import common_pb2
from distillery.registry.v1 import registry_pb2
from services.registry.models import Model

# The settings a card shows, in this order, where the recipe recorded them (``sft``/``grpo`` sections).
SFT_SETTINGS = (
    "learning_rate", "epochs", "max_steps", "batch_size", "gradient_accumulation_steps", "max_seq_length",
    "full_finetune", "lora_r", "lora_alpha", "lora_dropout", "eval_every_steps", "early_stopping_patience", "seed",
)  # fmt: skip
GRPO_SETTINGS = ("learning_rate", "max_steps", "num_generations", "beta", "temperature", "max_completion_length")


def path_name(path: int) -> str:
    """``TRAINING_PATH_FINETUNE_TEXT`` -> ``finetune-text``."""
    try:
        name = common_pb2.TrainingPath.Name(path)  # type: ignore[arg-type]
    except ValueError:
        return f"path {path}"
    return name.removeprefix("TRAINING_PATH_").lower().replace("_", "-")


def is_adapter(model: Model) -> bool:
    return model.artifact_kind == registry_pb2.ARTIFACT_KIND_LORA_ADAPTER


def render(model: Model, export_format: str = "") -> str:
    """The card of ``model``; ``export_format`` ("adapter", "merged", "gguf"; "" for the registry's own view)
    picks the loading snippet."""
    config = model.training_config or {}
    weights = "LoRA adapter" if is_adapter(model) else "full weights"
    trained = f"A {path_name(model.path)} model trained with Distillery from `{model.base_model}` ({weights})"
    if is_adapter(model) and export_format in ("merged", "gguf"):
        weights += ", merged into its base model in this export"
    lines = [
        f"# {model.name} (version {model.version})",
        "",
        trained + ".",
        "",
        "| | |",
        "| --- | --- |",
        f"| Model id | `{model.id}` |",
        f"| Base model | `{model.base_model}` |",
        f"| Training path | {path_name(model.path)} |",
        f"| Recipe | {config.get('recipe') or 'none (settings given in the run request)'} |",
        f"| Weights | {weights} |",
        f"| Run | `{model.run_id}` |",
        f"| Created | {model.created_at.strftime('%Y-%m-%d %H:%M UTC')} |",
    ]
    if export_format:
        lines.append(f"| Export format | {export_format} |")
    lines += ["", "## Data", "", *data_lines(config), "", "## Settings", "", *settings_lines(config)]
    lines += ["", "## Evaluation", "", *metric_lines(model.metrics), "", "## How to load it", ""]
    lines += load_lines(model, export_format)
    return "\n".join(lines) + "\n"


def data_lines(config: dict[str, Any]) -> list[str]:
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    assert isinstance(data, dict)
    lines = []
    if data.get("dataset_id"):
        lines.append(f"- Training dataset: `{data['dataset_id']}`")
    if data.get("teacher"):
        job = f" (generation job `{data['generation_job_id']}`)" if data.get("generation_job_id") else ""
        lines.append(f"- Teacher: `{data['teacher']}`{job}")
    if data.get("eval_dataset_id"):
        lines.append(f"- Eval dataset: `{data['eval_dataset_id']}`")
    elif data:
        lines.append("- Eval rows: held out from the training data")
    if data.get("split_id"):
        lines.append(f"- Split: `{data['split_id']}`")
    for key, label in (("train_rows", "Train rows"), ("eval_rows", "Eval rows")):
        if isinstance(config.get(key), int | float):
            lines.append(f"- {label}: {int(config[key]):,}")
    return lines or ["Not recorded for this model."]


def settings_lines(config: dict[str, Any]) -> list[str]:
    lines = []
    for section, names in (("sft", SFT_SETTINGS), ("grpo", GRPO_SETTINGS)):
        values = config.get(section)
        if not isinstance(values, dict):
            continue
        shown = [(name, values[name]) for name in names if values.get(name) is not None]
        if section == "sft" and values.get("full_finetune"):
            shown = [(n, v) for n, v in shown if not n.startswith("lora_")]
        if shown:
            lines += [f"{section.upper()}:", "", *(f"- {name}: {setting(value)}" for name, value in shown), ""]
    return lines[:-1] if lines else ["Not recorded for this model."]


def setting(value: Any) -> str:
    """A setting as written: whole numbers (stored as floats in the training config's Struct) without ".0"."""
    if isinstance(value, float) and math.isfinite(value) and value == int(value):
        return str(int(value))
    return str(value)


def metric_lines(metrics: dict[str, float]) -> list[str]:
    if not metrics:
        return ["No evaluation figures were recorded."]
    rows = ["| metric | value |", "| --- | --- |"]
    for name in sorted(metrics):
        value = metrics[name]
        shown = f"{value:.6g}" if math.isfinite(value) and value != int(value) else f"{value:g}"
        rows.append(f"| {name} | {shown} |")
    return rows


def load_lines(model: Model, export_format: str) -> list[str]:
    """A transformers (and peft) snippet for the export's files, in the directory they were downloaded to."""
    if export_format == "gguf":
        return [
            "With llama.cpp (or anything that reads GGUF):",
            "",
            "```sh",
            "llama-server -m model.gguf --jinja",
            "```",
        ]
    auto = {
        common_pb2.TRAINING_PATH_FINETUNE_ASR: ("AutoModelForSpeechSeq2Seq", "AutoProcessor", "processor"),
        common_pb2.TRAINING_PATH_FINETUNE_OCR: ("AutoModelForImageTextToText", "AutoProcessor", "processor"),
    }.get(model.path, ("AutoModelForCausalLM", "AutoTokenizer", "tokenizer"))  # type: ignore[call-overload]
    model_class, preprocessor, name = auto
    if export_format == "adapter" or (not export_format and is_adapter(model)):
        body = [
            "from peft import PeftModel",
            f"from transformers import {model_class}, {preprocessor}",
            "",
            f'base = {model_class}.from_pretrained("{model.base_model}")',
            'model = PeftModel.from_pretrained(base, "./export").merge_and_unload()',
            f'{name} = {preprocessor}.from_pretrained("./export")',
        ]
    else:
        body = [
            f"from transformers import {model_class}, {preprocessor}",
            "",
            f'model = {model_class}.from_pretrained("./export")',
            f'{name} = {preprocessor}.from_pretrained("./export")',
        ]
    where = "`./export` is the directory you exported to "
    where += f"(`distillery models export {model.id} --format {export_format or 'merged'} --out ./export`)."
    return [where, "", "```python", *body, "```"]
