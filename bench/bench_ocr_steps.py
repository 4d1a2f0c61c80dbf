"""Training steps per second of a DeepSeek-OCR 2 of a given size, as the OCR recipe trains it: LoRA on the language
model's projections (the recipe's default) against a full fine-tune of everything but the vision tower (the
baseline), both with the vision tower frozen, measured in the same run.

The model is built from the size's config with random weights: no download, the same arithmetic. ``deepseek-ocr-2``
is the real model's shape (a SAM ViT-B and a Qwen2-0.5B-shaped encoder with 256 learned queries for a 1024 px view;
DeepSeek3B-MoE: 12 layers of 1280, the first dense, then 64 routed experts of which 6 are used and 2 shared);
``tiny`` is the tests' model (``tests/tiny_models.build_tiny_vlm``: a 192 px view, 144 queries). Each step is a
forward and backward pass over a batch of one global view an image (the recipe's ``base`` mode) with its image
tokens, the prompt and ``ANSWER_TOKENS`` answer tokens (the labels), then an AdamW step over the trained weights:
the work of one ``Trainer`` step without its bookkeeping. The weights are in bf16 where CUDA supports it (the
recipe's GPU setting), fp32 otherwise.

    python -m bench.bench_ocr_steps                              # tiny on CPU, deepseek-ocr-2 on a GPU
    python -m bench.bench_ocr_steps --size deepseek-ocr-2 --batch 2 --steps 2
"""

from __future__ import annotations

import argparse
from typing import Any

from bench import training_steps
from services.trainer.recipes.ocr import is_vision, lora_targets

SIZES: dict[str, dict[str, Any]] = {
    "tiny": {
        "image": 192, "sam": {"hidden_size": 32, "output_channels": 32, "num_hidden_layers": 2,
                              "num_attention_heads": 2, "patch_size": 4, "window_size": 4, "global_attn_indexes": [1],
                              "mlp_dim": 64, "downsample_channels": [32, 32]},
        "encoder": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                    "num_key_value_heads": 1},
        "text": {"vocab_size": 400, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                 "num_attention_heads": 4, "num_key_value_heads": 4, "mlp_layer_types": ["dense", "dense"]},
    },
    "deepseek-ocr-2": {
        "image": 1024, "sam": {"hidden_size": 768, "output_channels": 256, "num_hidden_layers": 12,
                               "num_attention_heads": 12, "patch_size": 16, "window_size": 14,
                               "global_attn_indexes": [2, 5, 8, 11], "downsample_channels": [512, 896]},
        "encoder": {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
                    "num_key_value_heads": 2},
        "text": {"vocab_size": 129_280, "hidden_size": 1280, "intermediate_size": 6848, "num_hidden_layers": 12,
                 "num_attention_heads": 10, "num_key_value_heads": 10, "moe_intermediate_size": 896,
                 "n_routed_experts": 64, "n_shared_experts": 2, "num_experts_per_tok": 6,
                 "mlp_layer_types": ["dense"] + ["sparse"] * 11},
    },
}  # fmt: skip
PROMPT_TOKENS = 6  # "<image>\nFree OCR." after the image's tokens, about
ANSWER_TOKENS = 64


def build(size: str) -> Any:
    from transformers import DeepseekOcr2Config, DeepseekOcr2ForConditionalGeneration

    shape = SIZES[size]
    config = DeepseekOcr2Config(
        vision_config={"sam_config": {**shape["sam"], "image_size": shape["image"]},
                       "encoder_config": shape["encoder"]},
        text_config=shape["text"], image_token_id=shape["text"]["vocab_size"] - 1,
    )  # fmt: skip
    return DeepseekOcr2ForConditionalGeneration(config)


def steps_per_second(size: str, lora: bool, batch: int, steps: int, device: str) -> tuple[float, int]:
    """Steps per second after one warm-up step, and the trained parameters."""
    import torch

    torch.manual_seed(0)
    model = build(size)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=lora_targets(model, False)))
    else:
        for name, parameter in model.named_parameters():
            parameter.requires_grad = not is_vision(name)
    bf16 = device == "cuda" and torch.cuda.is_bf16_supported()
    model.to(device, torch.bfloat16 if bf16 else torch.float32).train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5)
    shape, config = SIZES[size], model.config
    image_tokens = (shape["image"] // shape["sam"]["patch_size"] // 4) ** 2 + 1  # one view's queries + separator
    vocab = shape["text"]["vocab_size"] - 1
    text = torch.randint(0, vocab, (batch, PROMPT_TOKENS + ANSWER_TOKENS), device=device)
    ids = torch.cat([torch.full((batch, image_tokens), config.image_token_id, device=device), text], dim=1)
    labels = ids.clone()
    labels[:, : image_tokens + PROMPT_TOKENS] = -100  # the answer's tokens only, as the recipe's collator does
    pixels = torch.randn(batch, 3, shape["image"], shape["image"], device=device, dtype=trainable[0].dtype)

    def step() -> None:
        loss = model(input_ids=ids, pixel_values=pixels, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return training_steps.steps_per_second(step, steps, device), sum(p.numel() for p in trainable)


def main(argv: list[str] | None = None) -> None:
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="deepseek-ocr-2" if device == "cuda" else "tiny")
    parser.add_argument("--batch", type=int, default=8 if device == "cuda" else 2)
    parser.add_argument("--steps", type=int, default=10 if device == "cuda" else 3)
    args = parser.parse_args(argv or [])
    full = steps_per_second(args.size, False, args.batch, args.steps, device)
    lora = steps_per_second(args.size, True, args.batch, args.steps, device)
    precision = "bf16" if device == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    view = SIZES[args.size]["image"]
    training_steps.report(
        f"{args.size} on {device} ({precision}), batch {args.batch} x one {view} px view + {ANSWER_TOKENS} answer "
        f"tokens, {args.steps} steps:",
        "images",
        args.batch,
        full,
        lora,
        rank=16,
    )


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
