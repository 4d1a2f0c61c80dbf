"""A registered model's directory loaded as it is served: one loader for ``Generate`` and for the recipes
that evaluate what users will get (``services/trainer/recipes/answers.py``).

The tokenizer is the one saved with the model; a LoRA adapter is merged into its base model
(``merge_and_unload``), full weights are loaded as saved; ``dtype="auto"``; on the GPU when there is
one; in eval mode. torch, transformers and peft are imported on first use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class BaseModelUnavailable(Exception):
    """An adapter's base model cannot be loaded (not on the hub, not at that path, not a model)."""


def load(directory: Path, base_model: str, adapter: bool) -> tuple[Any, Any]:
    """(model, tokenizer) of the model saved in ``directory``; ``adapter``: it is a LoRA adapter on ``base_model``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory)
    if adapter:
        from peft import PeftModel

        try:
            base = AutoModelForCausalLM.from_pretrained(base_model, dtype="auto")
        except (OSError, ValueError) as err:
            raise BaseModelUnavailable(str(err)) from None
        model = PeftModel.from_pretrained(base, directory).merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(directory, dtype="auto")
    if torch.cuda.is_available():
        model = model.to("cuda")
    return model.eval(), tokenizer
