"""How a GRPO step's completions are generated (``tool_grpo.grpo_train``): vLLM where it installs, else one
batched ``generate`` whose prompts are prefilled once each and shared by their ``num_generations`` samples.

trl's own path without vLLM (``GRPOTrainer._generate_single_turn``) tokenizes every row of the generation
batch (each prompt ``num_generations`` times) and runs ``generate`` on the left-padded batch: every
copy of a prompt is prefilled again, ``num_generations`` times the prompt's forward pass. For a tool
prompt (the tools' schemas rendered in: hundreds of tokens) against a completion of a few dozen, that
prefill is a large share of a step on CPU. ``SharedPrefixRollout`` (trl's ``rollout_func``) instead:

- tokenizes each distinct prompt text once per run, exactly as trl does (``tokenizer(text)``: the prompt
  text has its BOS taken out by ``tool_data.grpo_rows``, so the tokenizer's own gives one);
- prefills the step's distinct prompts (left-padded, all but their last token) in one forward pass that
  keeps only the last position's logits, copies each prompt's KV cache to its ``num_generations`` rows,
  and samples all of the step's completions in one ``generate`` from that cache, with trl's
  ``GenerationConfig`` (temperature, top-p/k, stop tokens, ``max_completion_length``), the KV cache on;
- with LoRA (in float32: CPU), merges the adapter into the base weights for the call (``merged_lora``: a
  third of the matrix products of a layer per token; the base weights restored exactly afterwards). trl
  samples with the model as training leaves it, train mode and LoRA dropout included; merged, the dropout
  is off, as in vLLM's copy of the weights: the completions are sampled from the policy being trained;
- cuts each completion after its first stop token as trl does, and hands trl the ids: trl decodes them,
  so the rewards see the same text in the same columns as without it.

The model is as trl would generate with it (``unwrap_model_for_generation``: gradient checkpointing off
for the call, train or eval mode left as it is). On a GPU worker where ``vllm`` imports, trl's
colocated vLLM engine generates instead (``vllm_settings``); the engine is recorded in the run's metrics
(``grpo_generation_vllm``) and its training config (``grpo_generation_engine``).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

VLLM, TRANSFORMERS = "vllm", "transformers"


def engine(use_gpu: bool) -> str:
    """``vllm`` on a GPU worker where the ``vllm`` package imports, else ``transformers``."""
    if not use_gpu or importlib.util.find_spec("vllm") is None:
        return TRANSFORMERS
    import torch

    return VLLM if torch.cuda.is_available() else TRANSFORMERS


def vllm_settings() -> dict[str, Any]:
    """What ``GRPOConfig`` is given for vLLM: colocated in the training process (no server to run), sharing the
    GPU with training (trl's default share of its memory, 0.3)."""
    return {"use_vllm": True, "vllm_mode": "colocate", "vllm_gpu_memory_utilization": 0.3}


def runs(prompts: list[Any]) -> tuple[list[Any], list[int]]:
    """Consecutive equal prompts as (the distinct ones in order, how many times each comes): trl's sampler puts a
    prompt's ``num_generations`` rows side by side."""
    distinct: list[Any] = []
    counts: list[int] = []
    for prompt in prompts:
        if distinct and prompt == distinct[-1]:
            counts[-1] += 1
        else:
            distinct.append(prompt)
            counts.append(1)
    return distinct, counts


def cut_at_stop(rows: Any, stop_ids: list[int]) -> list[list[int]]:
    """Each row up to and including its first stop token (all of it when it has none), as trl keeps completions."""
    out = []
    stops = set(stop_ids)
    for row in rows.tolist():
        end = next((i for i, token in enumerate(row) if token in stops), len(row) - 1)
        out.append(row[: end + 1])
    return out


def sample_shared_prefix(
    model: Any, prompt_ids: list[list[int]], counts: list[int], generation_config: Any, pad_id: int
) -> list[list[int]]:
    """``counts[i]`` completions of prompt ``prompt_ids[i]`` (in order), sampled in one batched ``generate`` with
    each prompt prefilled once; the rows' completion ids, cut after their first stop token."""
    import torch

    device = model.device
    longest = max(len(ids) for ids in prompt_ids)
    padded = torch.full((len(prompt_ids), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompt_ids), longest), dtype=torch.long)
    for row, ids in enumerate(prompt_ids):
        padded[row, longest - len(ids) :] = torch.tensor(ids)
        mask[row, longest - len(ids) :] = 1
    padded, mask = padded.to(device), mask.to(device)
    rows = torch.repeat_interleave(torch.arange(len(prompt_ids), device=device), torch.tensor(counts, device=device))
    with torch.no_grad():
        cache = None
        if longest > 1:  # the last token is left for generate, which needs at least one to run
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            prefill = model(
                input_ids=padded[:, :-1], attention_mask=mask[:, :-1], position_ids=positions[:, :-1],
                use_cache=True, logits_to_keep=1,
            )  # fmt: skip
            cache = prefill.past_key_values
            cache.batch_select_indices(rows)
        out = model.generate(
            input_ids=padded[rows], attention_mask=mask[rows], past_key_values=cache,
            generation_config=generation_config,
        )  # fmt: skip
    stops = generation_config.eos_token_id
    stops = [stops] if isinstance(stops, int) else list(stops or [])
    return cut_at_stop(out[:, longest:].cpu(), stops)


def sample_texts(
    model: Any, tokenizer: Any, prompts: list[str], per_prompt: int, max_new_tokens: int, temperature: float
) -> list[str]:
    """``per_prompt`` completions of each prompt text (in order) as GRPO samples them: tokenized as trl does, each
    prompt prefilled once, sampled at ``temperature`` (``decoding.sampling``), cut and decoded as ``Generate`` does
    (``decoding``); the model in eval mode for the call. The reward dry run's sampling."""
    from transformers import GenerationConfig

    from services.common import decoding

    ends = decoding.end_ids(model, tokenizer)
    config = GenerationConfig(
        max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, eos_token_id=ends,
        **decoding.sampling(temperature),
    )  # fmt: skip
    rollout = SharedPrefixRollout(tokenizer)
    was_training = model.training
    model.eval()
    try:
        rows = sample_shared_prefix(
            model, [rollout.prompt_ids(p) for p in prompts], [per_prompt] * len(prompts), config, tokenizer.pad_token_id
        )
    finally:
        model.train(was_training)
    return [decoding.completion(tokenizer, row, ends)[0] for row in rows]


@contextmanager
def merged_lora(model: Any) -> Iterator[None]:
    """A LoRA model's adapter merged into its base weights for the block (one matrix product a layer per token
    instead of three), then taken out again with the base weights restored bit for bit (kept aside meanwhile:
    ``W + BA - BA`` would round). A model without LoRA layers, or not in float32, is left as it is (a bf16 copy
    would cost GPU memory that vLLM's engine already saves)."""
    import torch
    from peft.tuners.lora import LoraLayer

    layers: list[Any] = [m for m in model.modules() if isinstance(m, LoraLayer) and not m.merged]
    bases = [layer.get_base_layer() for layer in layers]
    if not layers or any(base.weight.dtype != torch.float32 for base in bases):
        yield
        return
    with torch.no_grad():
        kept = [base.weight.detach().clone() for base in bases]
        for layer in layers:
            layer.merge()
    try:
        yield
    finally:
        with torch.no_grad():
            for layer, base, weight in zip(layers, bases, kept, strict=True):
                layer.unmerge()
                base.weight.copy_(weight)


class SharedPrefixRollout:
    """trl's ``rollout_func`` (``GRPOTrainer(rollout_func=...)``) for text prompts: the module docstring."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._ids: dict[str, list[int]] = {}  # each prompt text tokenized once per run

    def prompt_ids(self, text: str) -> list[int]:
        ids = self._ids.get(text)
        if ids is None:
            ids = self._ids[text] = list(self.tokenizer(text)["input_ids"])
        return ids

    def __call__(self, prompts: list[Any], trainer: Any) -> dict[str, Any]:
        from trl.models.utils import unwrap_model_for_generation

        distinct, counts = runs(prompts)
        distinct_ids = [self.prompt_ids(text) for text in distinct]
        with unwrap_model_for_generation(
            trainer.model_wrapped, trainer.accelerator, generation_kwargs=trainer.generation_kwargs,
            gradient_checkpointing_kwargs=trainer.args.gradient_checkpointing_kwargs,
        ) as model, merged_lora(model):  # fmt: skip
            completion_ids = sample_shared_prefix(
                model, distinct_ids, counts, trainer.generation_config, self.tokenizer.pad_token_id
            )
        prompt_ids = [ids for ids, count in zip(distinct_ids, counts, strict=True) for _ in range(count)]
        return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": None}
