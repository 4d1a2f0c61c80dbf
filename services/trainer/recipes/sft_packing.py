"""Padding-free packing for the SFT recipe, and the other speed choices of a run (recorded in its metrics).

Packing: trl's ``padding_free`` collator puts each batch's rows end to end in one sequence, with position ids
that start again at 0 for every row, the ``cu_seq_lens`` of the rows, and no padding at all; the label of each
row's first token is dropped, so no row learns from the one before it. The rows of a step and their order are
the unpacked recipe's (no ``packing=True`` bin-packing: that would change how many rows a step trains on).

Packed rows must not see each other. The attention used for a packed batch (``attention``):

- ``flash_attention_2`` where ``flash_attn`` imports (CUDA): its varlen kernel reads the ``cu_seq_lens``;
- otherwise ``VARLEN``, registered here: PyTorch's SDPA run once per row of the sequence (the slices the
  ``cu_seq_lens`` give) with a plain causal mask, so attention costs what each row alone costs (a
  block-diagonal mask over the whole sequence would cost the square of its length); rows are found from the
  ``cu_seq_lens``, else from where the position ids start again; with padding or a cache (generation) it is
  plain SDPA.

``is_exact`` checks it on the model itself before training: a few rows run one by one and packed must give the
same logits; where they do not (a model whose attention ignores the row boundaries), the recipe pads instead
and says so. The model's own attention is put back before it is saved (``restore``).
"""

from __future__ import annotations

import importlib.util
import itertools
import logging
from typing import Any

log = logging.getLogger("distillery.recipes.sft")
VARLEN = "distillery_varlen"
_PROBE_LENGTHS = (7, 12, 5)


def varlen_sdpa(
    module: Any, query: Any, key: Any, value: Any, attention_mask: Any, dropout: float = 0.0, **kwargs: Any
) -> tuple[Any, None]:
    """SDPA per row of a padding-free batch (``cu_seq_lens_q`` in ``kwargs``); plain SDPA otherwise."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    bounds = kwargs.pop("cu_seq_lens_q", None)
    positions = kwargs.pop("position_ids", None)
    for name in ("cu_seq_lens_k", "max_length_q", "max_length_k", "seq_idx"):
        kwargs.pop(name, None)
    one_sequence = query.shape[0] == 1 and query.shape[2] == key.shape[2] and attention_mask is None
    if bounds is None and one_sequence and positions is not None:  # rows packed by position ids alone
        starts = (positions.reshape(-1) == 0).nonzero().flatten()
        bounds = torch.cat([starts, starts.new_tensor([query.shape[2]])])
    if bounds is None or not one_sequence:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, **kwargs)
    edges = bounds.tolist()
    if edges[0] != 0:
        edges.insert(0, 0)
    outputs = [
        sdpa_attention_forward(
            module, query[:, :, start:end], key[:, :, start:end], value[:, :, start:end], None,
            dropout=dropout, is_causal=True, **kwargs,
        )[0]
        for start, end in itertools.pairwise(edges) if end > start
    ]  # fmt: skip
    return torch.cat(outputs, dim=1), None


def varlen_mask(**kwargs: Any) -> Any:
    """``VARLEN``'s mask: none without padding (no mask of the whole packed sequence squared), SDPA's with it."""
    from transformers.masking_utils import sdpa_mask

    return None if kwargs.get("attention_mask") is None else sdpa_mask(**kwargs)


def register() -> None:
    """Make ``VARLEN`` an attention implementation transformers knows."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(VARLEN, varlen_sdpa)
    AttentionMaskInterface.register(VARLEN, varlen_mask)


def flash_attention_available(use_gpu: bool) -> bool:
    import torch

    return use_gpu and torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None


def attention(model: Any, use_gpu: bool) -> str:
    """Switch ``model`` to the attention packed batches use; returns its name (the model's own one is kept in
    ``model._distillery_attention`` for ``restore``)."""
    model._distillery_attention = model.config._attn_implementation
    if flash_attention_available(use_gpu):
        try:
            model.set_attn_implementation("flash_attention_2")
            return "flash_attention_2"
        except (ImportError, ValueError, RuntimeError) as err:  # a flash_attn build this GPU or dtype cannot use
            log.warning("flash_attention_2 is not usable here (%s): attention per row with SDPA", err)
    register()
    model.set_attn_implementation(VARLEN)
    return VARLEN


def restore(model: Any) -> None:
    """Put back the attention the model was loaded with (what its saved config names)."""
    base = getattr(model, "get_base_model", lambda: model)()
    original = getattr(base, "_distillery_attention", None) or getattr(model, "_distillery_attention", None)
    if original and base.config._attn_implementation != original:
        base.set_attn_implementation(original)


def collate_padding_free(rows: list[list[int]], pad_token_id: int) -> dict[str, Any]:
    """trl's padding-free batch of ``rows`` (token ids), with every token's label."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    return DataCollatorForLanguageModeling(pad_token_id=pad_token_id, padding_free=True)(
        [{"input_ids": row} for row in rows]
    )


def is_exact(model: Any, tolerance: float = 1e-3) -> bool:
    """Whether ``model`` gives a packed batch the logits of its rows run one by one (as training runs it: no cache)."""
    import torch

    vocab = int(model.config.get_text_config().vocab_size)
    generator = torch.Generator().manual_seed(0)
    rows = [torch.randint(0, vocab, (n,), generator=generator).tolist() for n in _PROBE_LENGTHS]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            alone = [model(input_ids=torch.tensor([row], device=device), use_cache=False).logits[0] for row in rows]
            batch = collate_padding_free(rows, pad_token_id=0)
            inputs = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items() if k != "labels"}
            packed = model(**inputs, use_cache=False).logits[0]
    finally:
        model.train(was_training)
    expected = torch.cat(alone).float()
    scale = max(1.0, float(expected.abs().max()))
    return bool(torch.allclose(packed.float(), expected, atol=tolerance * scale, rtol=0))


class TokenCount:
    """The collator of a trainer, wrapped to count what its training batches hold (the batches made while the model
    trains, not the evals'): real tokens, and every slot (a real token or padding)."""

    def __init__(self, collator: Any, model: Any = None) -> None:
        self.collator = collator
        self.model = model
        self.real = 0
        self.slots = 0

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collator(examples)
        if self.model is not None and not self.model.training:
            return batch
        self.real += sum(len(example["input_ids"]) for example in examples)
        self.slots += int(batch["input_ids"].numel())
        return batch

    @property
    def non_padding_fraction(self) -> float:
        return self.real / self.slots if self.slots else 0.0


def needs_checkpointing(model: Any, settings: Any, use_gpu: bool) -> bool:
    """Gradient checkpointing only on a GPU whose free memory a step's activations would crowd: their rough size
    (``34 * hidden`` bytes a token a layer in bf16, Korthikanti et al.) above half the free memory."""
    import torch

    if not (use_gpu and torch.cuda.is_available()):
        return False
    config = model.config.get_text_config()
    tokens = settings.batch_size * settings.max_seq_length
    activations = 34 * int(config.hidden_size) * int(config.num_hidden_layers) * tokens
    free, _ = torch.cuda.mem_get_info()
    return activations > free / 2


def liger_available(use_gpu: bool) -> bool:
    """Liger's fused kernels (``use_liger_kernel``): on CUDA, where ``liger_kernel`` imports."""
    import torch

    return use_gpu and torch.cuda.is_available() and importlib.util.find_spec("liger_kernel") is not None


def choose(model: Any, settings: Any, use_gpu: bool, bf16: bool) -> dict[str, Any]:
    """The speed choices of a run, made on its model: packing (``settings.disable_packing`` off, more than one row
    a batch, and exact on this model: ``is_exact``), the attention, bf16, Liger's kernels, gradient checkpointing."""
    packing = not settings.disable_packing and settings.batch_size > 1
    if packing:
        attention(model, use_gpu)
        packing = is_exact(model)
        if not packing:
            restore(model)
            log.warning("packed rows see each other on this model: padding each batch instead")
    return {
        "packing": packing, "attention": model.config._attn_implementation, "bf16": bf16,
        "liger": liger_available(use_gpu), "gradient_checkpointing": needs_checkpointing(model, settings, use_gpu),
    }  # fmt: skip


def config_kwargs(speed: dict[str, Any]) -> dict[str, Any]:
    """``trl_configs.sft_config``'s keywords for the choices of ``choose``."""
    return {"padding_free": speed["packing"], "liger": speed["liger"], "checkpointing": speed["gradient_checkpointing"]}


def count_tokens(trainer: Any) -> TokenCount:
    """Wrap ``trainer``'s collator to count the real tokens and the slots of its training batches."""
    counter = TokenCount(trainer.data_collator, trainer.model)
    trainer.data_collator = counter
    return counter
