"""GRPO generation and training seconds per step: the platform's recipe against a plain ``trl.GRPOTrainer`` script.

Both sides train the same student from the same weights on the same prompts (the tools and requests of
``examples/tools/weather_calls.jsonl``, rendered as the recipe renders them: ``tool_data.grpo_rows``), with
the same rewards (``tool_rewards``), ``num_generations``, prompts a step, ``max_completion_length``,
temperature, learning rate, seed and steps:

- the platform: ``tool_grpo.grpo_train``, the tool-calling recipe's GRPO stage as a run calls it (its
  generation: ``grpo_generation``);
- plain TRL: ``GRPOConfig`` + ``GRPOTrainer`` as a user's script would write them, at the recipe's precision
  (``trl_configs.precision``: float32 on CPU), as ``bench_sft_vs_trl`` compares;
- plain TRL, its defaults: the same script with nothing else set. trl's ``GRPOConfig`` turns ``bf16`` on by
  default, which on a CPU means bf16 autocast: on a CPU with bf16 units (AMX, AVX512-BF16) its matrix products
  run in bfloat16, at another precision than the recipe's float32.

Each side's step time is split the same way (``tool_grpo.StepTimes``: the time in trl's sampling call, and the
rest). After one untimed step of each (the process's first trainer pays for lazy set-up), the runs alternate
(platform, TRL, TRL, platform, ... for ``--rounds``) so that a busy shared machine weighs on both alike; the
figures are the means over the rounds, and the ratios are TRL's seconds over the
platform's (above 1: the platform is faster).

- ``--model tiny`` (the default, and ``make bench``): the tests' tiny Qwen2 with the tool template,
  a full fine-tune;
- ``--model smollm2``: the demo's SmolLM2-135M-Instruct (``make distill-tools``' student), LoRA r 16 on
  every linear layer as the demo trains it.

    python -m bench.bench_grpo_vs_trl
    python -m bench.bench_grpo_vs_trl --model smollm2 --prompts-per-step 1 --steps 3
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from bench.bench_grpo_step import canonical_rows
from services.common import tool_format
from services.trainer.recipes import tool_data, tool_grpo, tool_rewards, trl_configs
from services.trainer.recipes.grpo_settings import GrpoSettings
from tests.tiny_models import build_qwen2


def student(name: str, scratch: Path) -> Path:
    if name == "tiny":
        return build_qwen2(scratch / "student", tools=True)
    from distillery.client import home
    from distillery.demo_model import ensure_demo_model

    return ensure_demo_model(home() / "models")


def load(path: Path, lora: bool) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
        )
    return model


def platform(model: Any, tokenizer: Any, rows: list[dict[str, str]], settings: GrpoSettings, out: Path) -> tuple:
    started = time.perf_counter()
    _, metrics = tool_grpo.grpo_train(model, tokenizer, rows, settings, 0, out, False, False, [])
    wall = time.perf_counter() - started
    return metrics["grpo_generation_s_per_step"], metrics["grpo_training_s_per_step"], wall


def plain_trl(
    model: Any, tokenizer: Any, rows: list[dict[str, str]], settings: GrpoSettings, out: Path,
    trl_defaults: bool = False,
) -> tuple:  # fmt: skip
    """What a user writes with trl alone: the same settings, trl's own generation; at the recipe's precision, or
    (``trl_defaults``) with trl's own (bf16 on)."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    bf16 = None if trl_defaults else trl_configs.precision(use_gpu=False)[0]  # None: trl's default (on)
    config = GRPOConfig(
        output_dir=str(out), use_cpu=True, seed=0, learning_rate=settings.learning_rate, max_steps=settings.max_steps,
        per_device_train_batch_size=settings.completions_per_step, num_generations=settings.num_generations,
        max_completion_length=settings.max_completion_length, temperature=settings.temperature, beta=settings.beta,
        reward_weights=list(tool_rewards.REWARD_WEIGHTS), save_strategy="no", report_to=[], bf16=bf16,
    )  # fmt: skip
    times = tool_grpo.StepTimes()
    trainer = GRPOTrainer(
        model=model, reward_funcs=list(tool_rewards.REWARD_FUNCTIONS), args=config, processing_class=tokenizer,
        train_dataset=Dataset.from_list(rows), callbacks=[times],
    )  # fmt: skip
    times.wrap(trainer)
    started = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - started
    steps = max(len(times.step_s), 1)
    generation = times.generation_s / steps
    return generation, max(sum(times.step_s) / steps - generation, 0.0), wall


def main(argv: list[str] | None = None) -> None:
    import torch
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    parser = argparse.ArgumentParser(prog="python -m bench.bench_grpo_vs_trl", description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["tiny", "smollm2"], default="tiny")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2, help="runs of each side, alternating (default 2)")
    parser.add_argument("--num-generations", type=int, default=4)
    parser.add_argument("--prompts-per-step", type=int, default=2)
    parser.add_argument("--max-completion", type=int, default=64)
    args = parser.parse_args(argv if argv is not None else sys.argv[1:] if __name__ == "__main__" else [])

    hf_logging.disable_progress_bar()
    settings = GrpoSettings(
        num_generations=args.num_generations, prompts_per_step=args.prompts_per_step,
        max_completion_length=args.max_completion, max_steps=args.steps, learning_rate=5e-5,
    )  # fmt: skip
    lora = args.model != "tiny"
    runs: dict[str, Callable[..., tuple]] = {
        "platform": platform, "trl": plain_trl, "trl defaults": partial(plain_trl, trl_defaults=True),
    }  # fmt: skip
    figures: dict[str, list[tuple[float, float, float]]] = {side: [] for side in runs}
    with tempfile.TemporaryDirectory(prefix="bench-grpo-trl-") as scratch:
        path = student(args.model, Path(scratch))
        tokenizer = AutoTokenizer.from_pretrained(path)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        rows = tool_data.grpo_rows(canonical_rows(), tool_format.detect(tokenizer), tokenizer)
        warm = dataclasses.replace(settings, max_steps=1)  # the process's first trainer pays for lazy set-up
        for run in (platform, plain_trl):
            run(load(path, lora), tokenizer, rows, warm, Path(scratch) / f"warm-{run.__name__}")
        sides = list(runs)
        order = [sides if i % 2 == 0 else sides[::-1] for i in range(args.rounds)]
        for i, ordered in enumerate(order):
            for side in ordered:
                torch.manual_seed(0)
                out = Path(scratch) / f"{side}-{i}".replace(" ", "-")
                figures[side].append(runs[side](load(path, lora), tokenizer, rows, settings, out))
                print(f"  run {i + 1} {side}: " + ", ".join(f"{x:.2f}" for x in figures[side][-1]), flush=True)
        parameters = sum(p.numel() for p in load(path, lora).parameters())

    def mean(side: str, k: int) -> float:
        return sum(f[k] for f in figures[side]) / len(figures[side])

    print(f"student: {args.model} ({parameters:,} parameters{', LoRA r 16' if lora else ', full fine-tune'}), fp32, "
          f"CPU, {torch.get_num_threads()} threads")  # fmt: skip
    print(
        f"GRPO: {args.steps} steps, {settings.prompts_per_step} prompts x {settings.num_generations} completions "
        f"of up to {settings.max_completion_length} tokens a step; {args.rounds} alternating runs a side"
    )
    print(f"  {'':<14} {'generation s/step':>18} {'training s/step':>16} {'run wall s':>11}")
    names = {"platform": "platform", "trl": "plain TRL", "trl defaults": "TRL, defaults"}
    for side, name in names.items():
        print(f"  {name:<14} {mean(side, 0):18.2f} {mean(side, 1):16.2f} {mean(side, 2):11.1f}")
    for side, label, note in (
        ("trl", "TRL / platform", "(above 1: the platform is faster; the same precision)"),
        ("trl defaults", "defaults / pl.", f"(trl's defaults: bf16 autocast on this CPU, {bf16_units()})"),
    ):
        ratios = [mean(side, k) / mean("platform", k) if mean("platform", k) else float("nan") for k in range(3)]
        ratio = " ".join(f"{r:{w}.2f}x" for r, w in zip(ratios, (17, 15, 10), strict=True))
        print(f"  {label:<14} {ratio}   {note}")


def bf16_units() -> str:
    """Whether this CPU computes in bfloat16 natively (what trl's default ``bf16`` autocast gains from)."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return "CPU flags unknown"
    units = [name for name in ("amx_bf16", "avx512_bf16") if name in flags.split()]
    return "bf16 units: " + (", ".join(units) if units else "none")


if __name__ == "__main__":
    main()
