"""Training steps per second of a Whisper of a given size, as the speech recipe trains it: LoRA on the attention
projections against a full fine-tune (the baseline), measured in the same run.

The model is built from the real size's config (layers, width, heads, mel bins, vocabulary) with random weights:
no download, the same arithmetic. Each step is a forward and backward pass over a batch of 30 s feature windows
(Whisper pads every clip to its window) and 24-token labels, then an AdamW step: the work of one
``Seq2SeqTrainer`` step without its bookkeeping. bf16 autocast where CUDA supports it (the recipe's GPU setting).

    python -m bench.bench_whisper_steps                     # tiny on CPU, large-v3 on a GPU
    python -m bench.bench_whisper_steps --size base --batch 4 --steps 3
"""

from __future__ import annotations

import argparse
import contextlib
from typing import Any

from bench import training_steps
from services.trainer.recipes.speech import LORA_TARGETS

SIZES: dict[str, dict[str, Any]] = {  # (d_model, layers each side, heads, ffn, mel bins) of OpenAI's checkpoints
    "tiny": {"d_model": 384, "layers": 4, "heads": 6, "ffn": 1536, "mels": 80},
    "base": {"d_model": 512, "layers": 6, "heads": 8, "ffn": 2048, "mels": 80},
    "small": {"d_model": 768, "layers": 12, "heads": 12, "ffn": 3072, "mels": 80},
    "medium": {"d_model": 1024, "layers": 24, "heads": 16, "ffn": 4096, "mels": 80},
    "large-v3": {"d_model": 1280, "layers": 32, "heads": 20, "ffn": 5120, "mels": 128},
}
LABEL_TOKENS = 24


def build(size: str) -> Any:
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    shape = SIZES[size]
    config = WhisperConfig(
        vocab_size=51_866 if size == "large-v3" else 51_865, num_mel_bins=shape["mels"], d_model=shape["d_model"],
        encoder_layers=shape["layers"], decoder_layers=shape["layers"], encoder_attention_heads=shape["heads"],
        decoder_attention_heads=shape["heads"], encoder_ffn_dim=shape["ffn"], decoder_ffn_dim=shape["ffn"],
    )  # fmt: skip
    return WhisperForConditionalGeneration(config)


def steps_per_second(size: str, lora: bool, batch: int, steps: int, device: str) -> tuple[float, int]:
    """Steps per second after one warm-up step, and the trainable parameters."""
    import torch

    torch.manual_seed(0)
    model = build(size)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=32, lora_alpha=64, target_modules=list(LORA_TARGETS)))
    model.to(device).train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5)
    mels = model.config.num_mel_bins
    features = torch.randn(batch, mels, 3000, device=device)
    labels = torch.randint(0, 50_000, (batch, LABEL_TOKENS), device=device)
    bf16 = device == "cuda" and torch.cuda.is_bf16_supported()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def step() -> None:
        with autocast:
            loss = model(input_features=features, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return training_steps.steps_per_second(step, steps, device), sum(p.numel() for p in trainable)


def main(argv: list[str] | None = None) -> None:
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="large-v3" if device == "cuda" else "tiny")
    parser.add_argument("--batch", type=int, default=16 if device == "cuda" else 2)
    parser.add_argument("--steps", type=int, default=10 if device == "cuda" else 2)
    args = parser.parse_args(argv or [])
    full = steps_per_second(args.size, False, args.batch, args.steps, device)
    lora = steps_per_second(args.size, True, args.batch, args.steps, device)
    precision = "bf16" if device == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    training_steps.report(
        f"whisper-{args.size} on {device} ({precision}), batch {args.batch} x 30 s windows, {args.steps} steps:",
        "clips",
        args.batch,
        full,
        lora,
        rank=32,
    )


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
