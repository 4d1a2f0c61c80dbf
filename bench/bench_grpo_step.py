"""Where a GRPO step's time goes on the tool-calling path: sampling completions vs the rest.

Runs the tool-calling recipe's own GRPO stage (``recipes/tool_calling.grpo_train``: trl's
``GRPOTrainer`` with the tool rewards) on a student built from a config, with the tools and
requests of ``examples/tools/weather_calls.jsonl`` (checked by the ingest validator), and
prints the seconds per step spent in trl's sampling call and in the rest (rewards, loss,
backward, optimizer), and the ratio generation / training, both measured in the same run.

- ``--size 0.5b`` (the default where CUDA is available): a Qwen2 of Qwen2.5-0.5B's shape
  (24 layers, hidden 896, 14 heads, 2 KV heads, 151,936-token embedding: 494M parameters),
  random weights, bf16 where supported;
- ``--size tiny`` (the default elsewhere, and in ``make bench``): the tests' tiny Qwen2.

A random student writes until ``--max-completion`` tokens, so sampling runs its longest:
an upper bound on the generation share for a trained student, which stops at its call.

    python -m bench.bench_grpo_step                 # tiny on CPU, 0.5B on a GPU
    python -m bench.bench_grpo_step --size 0.5b --steps 5 --num-generations 8
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from services.common import tool_format
from services.ingest.tool_rows import validate_tool_calls
from services.trainer.recipes import tool_calling
from services.trainer.recipes.grpo_settings import GrpoSettings
from tests.tiny_models import build_qwen2, build_tokenizer

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "tools" / "weather_calls.jsonl"
QWEN2_5_0_5B: dict[str, Any] = {
    "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
    "num_key_value_heads": 2, "vocab_size": 151_936, "max_position_embeddings": 4096, "tie_word_embeddings": True,
}  # fmt: skip


def canonical_rows() -> list[dict]:
    out = io.BytesIO()
    with EXAMPLES.open("rb") as f:
        report = validate_tool_calls(f, out)
    if not report.valid:
        sys.exit(f"{EXAMPLES} does not validate: {report.violations[0].message}")
    return [json.loads(line) for line in out.getvalue().splitlines()]


def build_student(size: str, directory: Path) -> Path:
    if size == "tiny":
        return build_qwen2(directory, tools=True)
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    build_tokenizer(directory, tools=True)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    config = Qwen2Config(**QWEN2_5_0_5B, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    Qwen2ForCausalLM(config).save_pretrained(directory)
    return directory


def main(argv: list[str] | None = None) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(prog="python -m bench.bench_grpo_step", description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=["tiny", "0.5b"], default="0.5b" if cuda else "tiny")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--num-generations", type=int, default=4)
    parser.add_argument("--prompts-per-step", type=int, default=2)
    parser.add_argument("--max-completion", type=int, default=64)
    args = parser.parse_args(argv if argv is not None else sys.argv[1:] if __name__ == "__main__" else [])

    bf16 = cuda and torch.cuda.is_bf16_supported()
    settings = GrpoSettings(
        num_generations=args.num_generations, prompts_per_step=args.prompts_per_step,
        max_completion_length=args.max_completion, max_steps=args.steps, learning_rate=5e-6,
    )  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-grpo-") as scratch:
        student = build_student(args.size, Path(scratch) / "student")
        tokenizer = AutoTokenizer.from_pretrained(student)
        model: Any = AutoModelForCausalLM.from_pretrained(student, dtype=torch.bfloat16 if bf16 else torch.float32)
        if cuda:
            model = model.to("cuda")
        parameters = sum(p.numel() for p in model.parameters())
        rows = tool_calling.grpo_rows(canonical_rows(), tool_format.detect(tokenizer), tokenizer)
        started = time.perf_counter()
        _, metrics = tool_calling.grpo_train(
            model, tokenizer, rows, settings, seed=0, workdir=Path(scratch), use_gpu=cuda, bf16=bf16, callbacks=[]
        )
        wall = time.perf_counter() - started
    generation, training = metrics["grpo_generation_s_per_step"], metrics["grpo_training_s_per_step"]
    device = torch.cuda.get_device_name(0) if cuda else "CPU"
    print(f"student: {args.size} Qwen2, {parameters:,} parameters, {'bf16' if bf16 else 'fp32'}, {device}")
    print(f"GRPO: {metrics['grpo_steps']:.0f} steps, {settings.prompts_per_step} prompts x "
          f"{settings.num_generations} completions of up to {settings.max_completion_length} tokens a step; "
          f"{wall:.1f} s in all")  # fmt: skip
    print(f"generation: {generation:.2f} s/step")
    print(f"training:   {training:.2f} s/step")
    print(f"generation / training ratio: {generation / training:.2f}" if training else "training took no time")


if __name__ == "__main__":
    main()
