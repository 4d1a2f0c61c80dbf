"""SFT hyperparameters: one dataclass, defaults, and the checks a request must pass.

Imported by the trainer service to validate ``CreateRunRequest.sft`` before a run is
queued, so it must stay light: no torch, transformers or ray here. The resolved settings
(``dataclasses.asdict``) travel in the run's spec to the recipe (``recipes/sft.py``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from services.common.errors import InvalidArgument

LORA_LEARNING_RATE = 2e-4
FULL_FINETUNE_LEARNING_RATE = 2e-5
MAX_SEQ_LENGTH_LIMIT = 131072
# The largest value of each whole-number setting (the smallest is 1, or 0 where 0 means "none"); docs/api.md.
UPPER_BOUNDS = {
    "epochs": 100, "batch_size": 1024, "gradient_accumulation_steps": 1024, "max_seq_length": MAX_SEQ_LENGTH_LIMIT,
    "checkpoint_every_steps": 1_000_000, "eval_every_steps": 1_000_000, "early_stopping_patience": 1000,
    "lora_r": 1024, "lora_alpha": 4096, "max_steps": 1_000_000, "seed": 2**32 - 1,
}  # fmt: skip


@dataclass
class SftSettings:
    """Supervised fine-tuning settings. In a request, 0 / 0.0 / false (or absent) means "the default"."""

    epochs: int = field(
        default=3, metadata={"help": "Passes over the training set (ignored when max_steps > 0); 1 to 100."}
    )
    learning_rate: float = field(
        default=0.0,
        metadata={
            "help": f"Peak learning rate. 0 picks the default: {LORA_LEARNING_RATE} for LoRA, "
            f"{FULL_FINETUNE_LEARNING_RATE} for a full fine-tune. In (0, 1]."
        },
    )
    batch_size: int = field(default=4, metadata={"help": "Training rows per device per step; 1 to 1024."})
    gradient_accumulation_steps: int = field(
        default=1, metadata={"help": "Micro-batches summed before each optimizer step; 1 to 1024."}
    )
    max_seq_length: int = field(
        default=1024,
        metadata={
            "help": f"Tokens per row (prompt + completion); longer rows are left out. 1 to {MAX_SEQ_LENGTH_LIMIT}."
        },
    )
    checkpoint_every_steps: int = field(
        default=50,
        metadata={
            "help": "Save a resumable checkpoint every N steps; 1 to 1,000,000. With early stopping, a cadence that "
            "is not a multiple of the evals' becomes the evals' (the best checkpoint must be kept)."
        },
    )
    eval_every_steps: int = field(
        default=0,
        metadata={
            "help": "Evaluate on the eval set every N steps; 0 = about ten evals a run (recipes/evals.py), -1 = only "
            "before and after training. Up to 1,000,000."
        },
    )
    early_stopping_patience: int = field(
        default=0,
        metadata={
            "help": "Stop after this many evals in a row without a better score; 0 = 3, -1 = never stop early. "
            "Up to 1000."
        },
    )
    full_finetune: bool = field(default=False, metadata={"help": "Train every weight instead of a LoRA adapter."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank; 1 to 1024."})
    lora_alpha: int = field(
        default=32, metadata={"help": "LoRA scaling numerator (scale = lora_alpha / lora_r); 1 to 4096."}
    )
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA branch, in [0, 1)."})
    seed: int = field(default=0, metadata={"help": "Seed for data order, initialisation and dropout; 0 to 2**32 - 1."})
    max_steps: int = field(
        default=0, metadata={"help": "Stop after this many optimizer steps; 0 = run all epochs. Up to 1,000,000."}
    )
    disable_packing: bool = field(
        default=False,
        metadata={
            "help": "Pad each batch to its longest row instead of packing its rows into one padding-free sequence "
            "(the default wherever the model keeps packed rows apart: checked on the model before training)."
        },
    )

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type in ("int", int) and (isinstance(value, bool) or not isinstance(value, int)):
                raise InvalidArgument(f"sft.{f.name} must be a whole number, not {value!r}", field=f"sft.{f.name}")
            if f.type in ("float", float) and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise InvalidArgument(f"sft.{f.name} must be a number, not {value!r}", field=f"sft.{f.name}")
            if f.type in ("bool", bool) and not isinstance(value, bool):
                raise InvalidArgument(f"sft.{f.name} must be true or false, not {value!r}", field=f"sft.{f.name}")
        if self.learning_rate == 0:
            self.learning_rate = FULL_FINETUNE_LEARNING_RATE if self.full_finetune else LORA_LEARNING_RATE
        at_least_one = ("epochs", "batch_size", "gradient_accumulation_steps", "max_seq_length")
        for name in (*at_least_one, "checkpoint_every_steps", "lora_r", "lora_alpha"):
            if getattr(self, name) < 1:
                raise InvalidArgument(f"sft.{name} must be at least 1 (or 0 for the default)", field=f"sft.{name}")
        for name in ("eval_every_steps", "early_stopping_patience"):
            if getattr(self, name) < -1:
                raise InvalidArgument(f"sft.{name} must be -1 (off), 0 (the default) or more", field=f"sft.{name}")
        for name in ("max_steps", "seed"):
            if getattr(self, name) < 0:
                raise InvalidArgument(f"sft.{name} must not be negative", field=f"sft.{name}")
        if not (math.isfinite(self.learning_rate) and 0 < self.learning_rate <= 1):
            raise InvalidArgument(
                f"sft.learning_rate={self.learning_rate} is out of range: give a value in (0, 1], e.g. "
                f"{LORA_LEARNING_RATE} for LoRA or {FULL_FINETUNE_LEARNING_RATE} for a full fine-tune",
                field="sft.learning_rate",
            )
        if not (math.isfinite(self.lora_dropout) and 0 <= self.lora_dropout < 1):
            raise InvalidArgument(
                f"sft.lora_dropout={self.lora_dropout} must be in [0, 1), e.g. 0.05", field="sft.lora_dropout"
            )
        for name, most in UPPER_BOUNDS.items():
            if getattr(self, name) > most:
                raise InvalidArgument(
                    f"sft.{name}={getattr(self, name)} is above the limit of {most:,}", field=f"sft.{name}"
                )
        if self.early_stopping_patience > 0 and self.eval_every_steps == -1:
            raise InvalidArgument(
                "sft.early_stopping_patience needs mid-training evals: leave sft.eval_every_steps at 0 (about ten "
                "evals a run) or set it, not -1",
                field="sft.eval_every_steps",
            )

    @property
    def artifact_kind(self) -> str:
        return "full_weights" if self.full_finetune else "lora_adapter"


def resolve_sft(request_sft: dict[str, Any]) -> SftSettings:
    """The settings of a request's ``SftSettings`` given as a dict of its proto field names.

    Absent, 0, 0.0 and false all mean "the default"; int64 fields may come as strings
    (``json_format.MessageToDict`` writes them so).
    """
    fields = {f.name: f for f in dataclasses.fields(SftSettings)}
    values: dict[str, Any] = {}
    for name, value in (request_sft or {}).items():
        if name not in fields:
            raise InvalidArgument(f"sft.{name} is not an SFT setting", field=f"sft.{name}")
        if fields[name].type in ("int", int) and isinstance(value, str):
            try:
                value = int(value)
            except ValueError:
                raise InvalidArgument(f"sft.{name}={value!r} is not a whole number", field=f"sft.{name}") from None
        elif fields[name].type in ("int", int) and isinstance(value, float) and value.is_integer():
            value = int(value)
        if value in (0, 0.0, False, None) and not isinstance(value, str):
            continue  # the default
        values[name] = value
    return SftSettings(**values)
