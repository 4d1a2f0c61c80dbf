"""Answer evaluation for text recipes: what a model answers to the eval prompts, asked as ``Generate`` asks.

A run reports a metric about its model only if a user can get the same number through the
registered model's ``Generate`` RPC (``services/registry/generate.py``). So the evaluation asks
exactly as ``Generate`` does, one prompt at a time:

- the prompt is the eval row's turns before the reference answer (``splits.prompt_completion``),
  rendered by the tokenizer's chat template with the generation prompt, and nothing else
  (``apply_chat_template(messages, add_generation_prompt=True)``);
- one unpadded row per ``generate`` call, greedy (temperature 0), stopping at the same end
  tokens and decoding the same way (``services.common.decoding``);
- within one token budget (``budget``), which the run records in its model's
  ``training_config.json`` (``"decoding": {"max_new_tokens": N, "temperature": 0.0}``) so that
  ``Generate`` asked with ``max_new_tokens=0`` (the model's default) answers within the same.

The base stage asks the student as training starts from it: a LoRA adapter not trained yet (every ``lora_B``
zero) adds exactly zero to each layer's output, so its answers are generated with the adapter off
(``adapter_off``): the same tokens, without the adapter layers' work at every generated token.

The final stage asks the model as users get it: reloaded from the directory that is uploaded
by ``Generate``'s own loader (``services.common.served_models.load``: a LoRA adapter merged into
its base).

Each answer is scored against the reference answer: an exact match after ``strip`` and
``casefold``, and a character similarity (``difflib.SequenceMatcher`` ratio, 0 to 1, of the same
normalised texts). ``evaluate`` returns the means as ``<stage>_answer_exact_rate`` and
``<stage>_answer_similarity`` with ``answer_eval_prompts`` (how many prompts were asked), and the
answers themselves (``messages``, ``answer``, ``reference``, ``finish_reason``): the run keeps them
in its model directory as ``eval_answers.json``, for anyone to ask ``Generate`` the same prompts.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from services.common import decoding, served_models

log = logging.getLogger("distillery.recipes.answers")

EVAL_PROMPTS = 16  # the first rows of the eval split that are asked
MIN_NEW_TOKENS, MAX_NEW_TOKENS = 16, 256
MARGIN_TOKENS = 8  # room past the longest reference: a word more, and the end token


def budget(rows: list[dict[str, Any]], tokenizer: Any) -> int:
    """The ``max_new_tokens`` of the evaluation (and of ``Generate``'s default): room for the longest
    reference answer of ``rows`` in tokens plus ``MARGIN_TOKENS``, within [``MIN_NEW_TOKENS``, ``MAX_NEW_TOKENS``]."""
    longest = max((len(tokenizer(reference(row), add_special_tokens=False)["input_ids"]) for row in rows), default=0)
    return min(MAX_NEW_TOKENS, max(MIN_NEW_TOKENS, longest + MARGIN_TOKENS))


def reference(row: dict[str, Any]) -> str:
    """A prompt-completion row's reference answer: the content of its final assistant turn."""
    return str(row["completion"][-1]["content"])


def evaluate(
    model: Any, tokenizer: Any, rows: list[dict[str, Any]], max_new_tokens: int, stage: str, limit: int = EVAL_PROMPTS
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """The metrics (module docstring) and the answers of ``model`` to the first ``limit`` ``rows``
    (prompt-completion rows: ``{"prompt": [turns], "completion": [the assistant's reference]}``)."""
    started = time.monotonic()
    was_training = model.training
    model.eval()
    ends = decoding.end_ids(model, tokenizer)
    answers = []
    try:
        with adapter_off(model):
            for row in rows[:limit]:
                text, finish = answer(model, tokenizer, row["prompt"], max_new_tokens, ends)
                answers.append({"messages": row["prompt"], "answer": text, "reference": reference(row),
                                "finish_reason": finish})  # fmt: skip
    finally:
        model.train(was_training)
    metrics = {**score(answers, stage), "answer_eval_prompts": float(len(answers))}
    log.info("%s answers (%.1f s): %s; first: %r", stage, time.monotonic() - started, metrics, answers[:1])
    return metrics, answers


@contextlib.contextmanager
def adapter_off(model: Any) -> Iterator[None]:
    """With the adapter of a PEFT model off while its adapter adds nothing (every ``lora_B`` zero, no DoRA: an
    adapter not trained yet), else as it is: the same outputs either way (module docstring)."""
    lora_b = [p for name, p in getattr(model, "named_parameters", list)() if "lora_B" in name]
    dora = any(getattr(config, "use_dora", False) for config in (getattr(model, "peft_config", None) or {}).values())
    if lora_b and not dora and hasattr(model, "disable_adapter") and all(not p.count_nonzero() for p in lora_b):
        with model.disable_adapter():
            yield
    else:
        yield


def answer(
    model: Any, tokenizer: Any, messages: list[dict[str, Any]], max_new_tokens: int, ends: list[int]
) -> tuple[str, str]:
    """One greedy answer (text, finish reason) to chat ``messages``, as ``Generate`` computes it without tools."""
    import torch

    prompt = list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"])
    input_ids = torch.tensor([prompt], device=model.device)
    with torch.inference_mode():
        output = model.generate(
            input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
            eos_token_id=ends, **decoding.sampling(0.0),
        )  # fmt: skip
    text, finish, _ = decoding.completion(tokenizer, output[0, len(prompt) :].tolist(), ends)
    return text, finish


def score(answers: list[dict[str, Any]], stage: str) -> dict[str, float]:
    """``<stage>_answer_exact_rate`` and ``<stage>_answer_similarity`` of answers with their references."""
    pairs = [(normalise(a["answer"]), normalise(a["reference"])) for a in answers]
    exact = sum(got == want for got, want in pairs)
    similarity = sum(difflib.SequenceMatcher(None, got, want).ratio() for got, want in pairs)
    n = max(1, len(pairs))
    return {f"{stage}_answer_exact_rate": exact / n, f"{stage}_answer_similarity": similarity / n}


def normalise(text: str) -> str:
    return text.strip().casefold()


def evaluate_served(
    directory: Path, base_model: str, adapter: bool, rows: list[dict[str, Any]], max_new_tokens: int,
    before: dict[str, Any],
) -> dict[str, float]:  # fmt: skip
    """Stage ``final``: the answers of the model saved in ``directory`` as ``Generate`` serves it
    (``served_models.load``). Writes them to ``directory/eval_answers.json`` next to the base's (``before``:
    ``answer_metrics`` and ``answers`` of stage ``base``, as ``eval_before.json`` keeps them) with the
    decoding; returns the metrics of both stages and the budget (``answer_max_new_tokens``)."""
    model, tokenizer = served_models.load(directory, base_model, adapter)
    final, answers = evaluate(model, tokenizer, rows, max_new_tokens, "final")
    metrics = {**before.get("answer_metrics", {}), **final, "answer_max_new_tokens": float(max_new_tokens)}
    record = {
        "decoding": {"max_new_tokens": max_new_tokens, "temperature": 0.0}, "metrics": metrics,
        "answers": answers, "base_answers": before.get("answers", []),
    }  # fmt: skip
    (directory / "eval_answers.json").write_text(json.dumps(record, indent=2, ensure_ascii=False))
    return metrics
