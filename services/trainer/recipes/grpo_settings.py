"""GRPO hyperparameters for SFT + RL runs on the tool-calling path: one dataclass, defaults, checks.

Like ``sft_settings.py``, imported by the trainer service to validate
``CreateRunRequest.grpo`` before a run is queued, so it stays light (no torch, trl or
ray). The resolved settings (``dataclasses.asdict``) travel in the run's spec to the
recipe (``recipes/tool_calling.py``), which hands them to trl's ``GRPOConfig``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from services.common.errors import InvalidArgument

LORA_LEARNING_RATE = 5e-5
FULL_FINETUNE_LEARNING_RATE = 5e-6
MAX_GENERATIONS = 64
MAX_COMPLETION_LENGTH_LIMIT = 8192
MAX_STEPS_LIMIT = 100_000
MAX_PROMPTS_PER_STEP = 256


@dataclass
class GrpoSettings:
    """GRPO settings. In a request, 0 / 0.0 (or absent) means "the default"."""

    num_generations: int = field(
        default=4,
        metadata={
            "help": "Completions sampled per prompt; GRPO compares them with each other, so at least 2. More "
            f"give a steadier signal and cost generation time. 2 to {MAX_GENERATIONS}."
        },
    )
    max_completion_length: int = field(
        default=128,
        metadata={
            "help": f"Tokens generated per completion at most; longer ones are cut. 1 to {MAX_COMPLETION_LENGTH_LIMIT}."
        },
    )
    beta: float = field(
        default=0.0,
        metadata={
            "help": "Weight of the KL penalty that keeps the policy near the SFT model; 0 (trl's default) "
            "needs no reference model. In [0, 10]."
        },
    )
    learning_rate: float = field(
        default=0.0,
        metadata={
            "help": f"Peak learning rate. 0 picks the default: {LORA_LEARNING_RATE} for LoRA, "
            f"{FULL_FINETUNE_LEARNING_RATE} for a full fine-tune (sft.full_finetune decides). In (0, 1]."
        },
    )
    max_steps: int = field(default=30, metadata={"help": f"Optimizer steps of GRPO; 1 to {MAX_STEPS_LIMIT:,}."})
    temperature: float = field(
        default=1.0, metadata={"help": "Sampling temperature of the completions, in (0, 2]; higher is more varied."}
    )
    prompts_per_step: int = field(
        default=2,
        metadata={
            "help": f"Prompts per optimizer step; each gets num_generations completions. 1 to {MAX_PROMPTS_PER_STEP}."
        },
    )

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value, where = getattr(self, f.name), f"grpo.{f.name}"
            if f.type in ("int", int) and (isinstance(value, bool) or not isinstance(value, int)):
                raise InvalidArgument(f"{where} must be a whole number, not {value!r}", field=where)
            if f.type in ("float", float) and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise InvalidArgument(f"{where} must be a number, not {value!r}", field=where)
        if self.learning_rate == 0:
            self.learning_rate = LORA_LEARNING_RATE
        if not 2 <= self.num_generations <= MAX_GENERATIONS:
            raise InvalidArgument(
                f"grpo.num_generations={self.num_generations}: give 2 to {MAX_GENERATIONS} (GRPO compares the "
                "completions of a prompt with each other, so it needs at least 2; 4 to 8 is usual)",
                field="grpo.num_generations",
            )
        if not 1 <= self.max_completion_length <= MAX_COMPLETION_LENGTH_LIMIT:
            raise InvalidArgument(
                f"grpo.max_completion_length={self.max_completion_length}: give 1 to {MAX_COMPLETION_LENGTH_LIMIT} "
                "tokens, enough for the longest call (e.g. 128)",
                field="grpo.max_completion_length",
            )
        if not (math.isfinite(self.beta) and 0 <= self.beta <= 10):
            raise InvalidArgument(
                f"grpo.beta={self.beta} is out of range: give a value in [0, 10], e.g. 0 (no KL penalty) or 0.04",
                field="grpo.beta",
            )
        if not (math.isfinite(self.learning_rate) and 0 < self.learning_rate <= 1):
            raise InvalidArgument(
                f"grpo.learning_rate={self.learning_rate} is out of range: give a value in (0, 1], e.g. "
                f"{LORA_LEARNING_RATE} for LoRA or {FULL_FINETUNE_LEARNING_RATE} for a full fine-tune",
                field="grpo.learning_rate",
            )
        if not 1 <= self.max_steps <= MAX_STEPS_LIMIT:
            raise InvalidArgument(
                f"grpo.max_steps={self.max_steps}: give 1 to {MAX_STEPS_LIMIT} steps (e.g. 30)", field="grpo.max_steps"
            )
        if not (math.isfinite(self.temperature) and 0 < self.temperature <= 2):
            raise InvalidArgument(
                f"grpo.temperature={self.temperature} is out of range: give a value in (0, 2], e.g. 1.0",
                field="grpo.temperature",
            )
        if not 1 <= self.prompts_per_step <= MAX_PROMPTS_PER_STEP:
            raise InvalidArgument(f"grpo.prompts_per_step={self.prompts_per_step}: give 1 to {MAX_PROMPTS_PER_STEP} "
                                  "(or 0 for the default, 2)", field="grpo.prompts_per_step")  # fmt: skip

    @property
    def completions_per_step(self) -> int:
        """The generation batch: a multiple of num_generations, as trl requires."""
        return self.prompts_per_step * self.num_generations


def resolve_grpo(request_grpo: dict[str, Any], *, full_finetune: bool = False) -> GrpoSettings:
    """The settings of a request's ``GrpoSettings`` given as a dict of its proto field names.

    Absent, 0 and 0.0 mean "the default" (so ``beta`` 0 is the default 0); ints may come as
    strings. ``full_finetune`` (the run's ``sft.full_finetune``) picks the default learning rate.
    """
    fields = {f.name: f for f in dataclasses.fields(GrpoSettings)}
    values: dict[str, Any] = {}
    for name, value in (request_grpo or {}).items():
        if name not in fields:
            raise InvalidArgument(f"grpo.{name} is not a GRPO setting", field=f"grpo.{name}")
        if fields[name].type in ("int", int) and isinstance(value, str):
            try:
                value = int(value)
            except ValueError:
                raise InvalidArgument(f"grpo.{name}={value!r} is not a whole number", field=f"grpo.{name}") from None
        elif fields[name].type in ("int", int) and isinstance(value, float) and value.is_integer():
            value = int(value)
        if value in (0, 0.0, None) and not isinstance(value, str | bool):
            continue  # the default
        values[name] = value
    if full_finetune and "learning_rate" not in values:
        values["learning_rate"] = FULL_FINETUNE_LEARNING_RATE
    return GrpoSettings(**values)
