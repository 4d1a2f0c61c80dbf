"""The tool-calling recipe's evaluation (``tool_calling.py``): the model's greedy outputs on the eval
prompts, scored by ``tool_rewards.score`` into rates (``RATES``) that name the stage evaluated
(``base_``, ``sft_``, ``grpo_``).

``generate`` tokenizes, stops, samples and decodes as ``Generate`` does (``tool_format``,
``decoding``), so what a run reports is what its registered model answers.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from services.common import decoding
from services.trainer.recipes import tool_rewards
from services.trainer.recipes.progress import ProgressPush, push_metrics

log = logging.getLogger("distillery.recipes.tool_calling")

RATES = ("valid_call_rate", "right_tool_rate", "schema_valid_rate", "args_match_rate", "no_call_rate", "correct_rate")


def generate(
    model: Any, tokenizer: Any, prompts: list[str], *, max_new_tokens: int, temperature: float = 0.0,
    per_prompt: int = 1, batch_size: int = 8,
) -> list[str]:  # fmt: skip
    """Completions (``per_prompt`` per prompt, in prompt order): greedy when ``temperature`` is 0, else sampled.

    Each prompt is tokenized as ``tool_format.prompt_ids`` tokenizes it, and stop tokens, sampling and decoding
    are ``decoding``'s, as in ``Generate``: what this reports is what the registered model answers."""
    import torch

    ends = decoding.end_ids(model, tokenizer)
    was_training, side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "left"
    out: list[str] = []
    try:
        for start in range(0, len(prompts), batch_size):
            batch = tokenizer(
                prompts[start : start + batch_size], add_special_tokens=False, padding=True, return_tensors="pt"
            ).to(model.device)
            with torch.no_grad():
                ids = model.generate(
                    **batch, max_new_tokens=max_new_tokens, num_return_sequences=per_prompt,
                    pad_token_id=tokenizer.pad_token_id, eos_token_id=ends, **decoding.sampling(temperature),
                )  # fmt: skip
            for row in ids[:, batch["input_ids"].shape[1] :].tolist():
                out.append(decoding.completion(tokenizer, row, ends)[0])
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return out


def evaluate(
    model: Any, tokenizer: Any, examples: dict[str, list[Any]], max_new_tokens: int, stage: str,
    progress: ProgressPush | None = None, step: int = 0, measured: dict[str, float] | None = None,
) -> dict[str, float]:  # fmt: skip
    """Greedy outputs on the eval prompts, scored: ``<stage>_<rate>`` for each rate of ``tool_rewards.score``.

    ``measured``: what a mid-training eval (``eval_<rate>``) already measured on these very weights (the stage's
    last step, or its best step put back bit for bit by ``evals.BestByMetric.restore``). Greedy decoding answers
    the same prompts with the same weights the same way, so its rates are renamed for ``stage`` instead of
    generated a second time."""
    if measured is not None:
        rates = {f"{stage}_{name}": measured[f"eval_{name}"] for name in RATES}
        log.info("%s eval: the mid-training eval of these same weights, reused: %s", stage, rates)
        push_metrics(progress, step, rates)
        return rates
    started = time.monotonic()
    outputs = generate(model, tokenizer, examples["prompts"], max_new_tokens=max_new_tokens)
    scores = tool_rewards.score(outputs, examples["expected"], examples["tools"])
    rates = {f"{stage}_{name}": scores[name] for name in RATES}
    log.info("%s eval (%.1f s): %s; first output: %r", stage, time.monotonic() - started, rates, outputs[:1])
    push_metrics(progress, step, rates)
    return rates
