"""The tool-calling recipe's GRPO stage (``tool_calling.py``): the model it starts from, a reward dry run
that refuses rewards without variance, and trl's ``GRPOTrainer`` with ``tool_rewards``' rewards.

The rows are ``tool_data.grpo_rows``: text prompts (the tools rendered in: trl does not pass per-row
tools to the template) with the reward columns ``tools`` and ``expected_calls``. Step time is split
into generation (trl's sampling call) and the rest. Completions come from ``grpo_generation``: trl's
colocated vLLM on a GPU worker where ``vllm`` imports, else one batched ``generate`` a step with each prompt
prefilled once for its ``num_generations`` samples (metric ``grpo_generation_vllm``: 1 or 0).

GRPO saves no checkpoints (its steps are few): an attempt the Ray Train job retries during GRPO (a worker lost)
starts GRPO over, reward dry run included, from the SFT model an earlier attempt kept (``tool_resume.keep``),
without evaluating the base again or training SFT again; its steps go on from the SFT stage's in the progress.
"""

from __future__ import annotations

import logging
import math
import random
import time
import warnings
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from services.trainer.recipes import failures, grpo_generation, tool_rewards, trl_configs
from services.trainer.recipes.failures import RunFailure
from services.trainer.recipes.grpo_settings import GrpoSettings
from services.trainer.recipes.watch import Watch

log = logging.getLogger("distillery.recipes.tool_calling")

REWARDS_WITHOUT_VARIANCE = "rewards_without_variance"
DRY_RUN_PROMPTS = 4


def grpo_start(model: Any, directory: Path) -> Any:
    """The model GRPO starts from: the SFT adapter as it is (trl copies it as the reference when beta > 0), or
    the full SFT model loaded from ``directory`` (saved there first unless it is there already), so that trl's
    reference (loaded by the model's name) is it, not the base."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    if isinstance(model, PeftModel) or model.name_or_path == str(directory):
        return model
    if not (directory / "config.json").is_file():
        model.save_pretrained(directory)
    return AutoModelForCausalLM.from_pretrained(directory, dtype=model.dtype).to(model.device)


def total_rewards(rows: list[dict[str, str]], completions: list[str]) -> list[float]:
    """Each completion's weighted reward sum, as GRPOTrainer adds them (``rows[i]`` is completion i's row)."""
    columns = {"tools": [r["tools"] for r in rows], "expected_calls": [r["expected_calls"] for r in rows]}
    prompts = [r["prompt"] for r in rows]
    totals = [0.0] * len(completions)
    for function, weight in zip(tool_rewards.REWARD_FUNCTIONS, tool_rewards.REWARD_WEIGHTS, strict=True):
        for i, value in enumerate(function(prompts, completions, **columns)):
            totals[i] += weight * value
    return totals


def reward_dry_run(
    model: Any, tokenizer: Any, rows: list[dict[str, str]], settings: GrpoSettings, seed: int
) -> dict[str, float]:
    """Sample a few groups with the GRPO settings; refuse (``rewards_without_variance``) when no group varies."""
    import torch

    picked = random.Random(seed).sample(rows, min(DRY_RUN_PROMPTS, len(rows)))
    torch.manual_seed(seed)
    completions = grpo_generation.sample_texts(
        model, tokenizer, [r["prompt"] for r in picked], settings.num_generations, settings.max_completion_length,
        settings.temperature,
    )  # fmt: skip
    expanded = [row for row in picked for _ in range(settings.num_generations)]
    totals = total_rewards(expanded, completions)
    groups = [totals[i : i + settings.num_generations] for i in range(0, len(totals), settings.num_generations)]
    varied = sum(1 for group in groups if max(group) - min(group) > 1e-9)
    log.info("reward dry run: %d of %d groups vary; totals %s", varied, len(groups), groups)
    if not varied:
        same = ", ".join(f"{group[0]:g}" for group in groups)
        raise RunFailure(
            REWARDS_WITHOUT_VARIANCE,
            f"the reward dry run sampled {settings.num_generations} completions for each of {len(groups)} training "
            f"prompts at grpo.temperature={settings.temperature:g}, and every prompt's completions got the same "
            f"total reward ({same}): GRPO learns only from differences between them, so it would not change the "
            "model. Give more diverse seed prompts, raise grpo.temperature (e.g. 1.2) or grpo.num_generations "
            "(e.g. 8), or run SFT only",
            "grpo.temperature",
        )
    return {
        "dry_run_prompts": len(groups), "dry_run_groups_with_variance": varied,
        "dry_run_reward_mean": sum(totals) / len(totals),
    }  # fmt: skip


def grpo_train(
    model: Any, tokenizer: Any, rows: list[dict[str, str]], settings: GrpoSettings, seed: int, workdir: Path,
    use_gpu: bool, bf16: bool, callbacks: list[Any],
) -> tuple[Any, dict[str, float]]:  # fmt: skip
    """trl's GRPOTrainer from ``model`` (the SFT model, or its adapter); returns the trained model and metrics."""
    from datasets import Dataset
    from trl import GRPOTrainer

    config = trl_configs.grpo_config(
        settings, workdir / "grpo-out", seed=seed, use_gpu=use_gpu, bf16=bf16,
        reward_weights=list(tool_rewards.REWARD_WEIGHTS),
    )  # fmt: skip
    engine = grpo_generation.engine(use_gpu)
    if engine == grpo_generation.VLLM:
        for name, value in grpo_generation.vllm_settings().items():
            setattr(config, name, value)
    times = StepTimes()
    watch = Watch(failures.GRPO)
    with warnings.catch_warnings():  # trl calls rollout_func experimental
        warnings.filterwarnings("ignore", message=".*rollout_func", category=UserWarning)
        trainer = GRPOTrainer(
            model=model, reward_funcs=list[Any](tool_rewards.REWARD_FUNCTIONS), args=config,
            processing_class=tokenizer, train_dataset=Dataset.from_list(rows), callbacks=[times, watch, *callbacks],
            rollout_func=grpo_generation.SharedPrefixRollout(tokenizer) if engine != grpo_generation.VLLM else None,
        )  # fmt: skip
    times.wrap(trainer)
    output = trainer.train()
    watch.check()
    rewards = [float(entry["reward"]) for entry in trainer.state.log_history if "reward" in entry]
    quarter = max(len(rewards) // 4, 1)  # the mean reward over the first and the last quarter of the logged steps
    steps = max(len(times.step_s), 1)
    generation = times.generation_s / steps
    metrics = {
        "grpo_steps": trainer.state.global_step, "grpo_runtime_s": float(output.metrics.get("train_runtime", 0.0)),
        "grpo_generation_vllm": float(engine == grpo_generation.VLLM),
        "grpo_generation_s_per_step": generation,
        "grpo_training_s_per_step": max(sum(times.step_s) / steps - generation, 0.0),
        "grpo_reward_first": rewards[0] if rewards else math.nan,
        "grpo_reward_last": rewards[-1] if rewards else math.nan,
        "grpo_reward_first_quarter": sum(rewards[:quarter]) / quarter if rewards else math.nan,
        "grpo_reward_last_quarter": sum(rewards[-quarter:]) / quarter if rewards else math.nan,
    }  # fmt: skip
    return trainer.model, metrics


class StepTimes(TrainerCallback):
    """Seconds per optimizer step, and the part of them spent in trl's sampling call (``_generate``)."""

    def __init__(self) -> None:
        self.step_s: list[float] = []
        self.generation_s = 0.0
        self._began = 0.0

    def wrap(self, trainer: Any) -> None:
        sample = trainer._generate

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return sample(*args, **kwargs)
            finally:
                self.generation_s += time.perf_counter() - started

        trainer._generate = timed

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._began = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.step_s.append(time.perf_counter() - self._began)
