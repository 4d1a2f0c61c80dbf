"""The SFT recipe's trainer against a plain ``trl.SFTTrainer`` script: real tokens per second, and how much of
each one's batches is real tokens (not padding).

Both train the same model (the same initial weights), on the same rows (``examples/support_pairs.jsonl`` as the
recipe reads a split), with the same sequence length, batch size, steps, LoRA adapter, learning rate,
precision and gradient checkpointing (the recipe's choices: off on CPU; trl's own defaults would turn it on,
which would slow the plain script further). What differs is what the recipe adds (``recipes/sft_packing.py``):
each batch's rows packed into one padding-free sequence, attention run per row. The plain script is what a
user would write::

    trainer = SFTTrainer(model=model, args=SFTConfig(output_dir=..., per_device_train_batch_size=4,
                         max_length=1024, max_steps=10, learning_rate=2e-4), processing_class=tokenizer,
                         train_dataset=Dataset.from_list(rows), peft_config=LoraConfig(...))
    trainer.train()

The two alternate, ``--rounds`` times each, in one process (fair on a shared machine); the figures are the
medians. Tokens per second are real tokens (prompt and completion, no padding) over trl's ``train_runtime``.

- ``--size small`` (the default on CPU, and in ``make bench``): a 9.7M-parameter Llama (6 layers of 384) with
  the tests' byte-level tokenizer, random weights;
- ``--size smollm2``: ``$DISTILLERY_HOME/models/SmolLM2-135M-Instruct`` (the demo's student), where present;
- ``--size 0.5b`` (the default where CUDA is available): a Qwen2 of Qwen2.5-0.5B's shape, random weights.

    python -m bench.bench_sft_vs_trl
    python -m bench.bench_sft_vs_trl --size smollm2 --steps 5 --rounds 2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

from services.trainer.recipes import sft_packing, trl_configs
from services.trainer.recipes.sft import recipe_trainer
from services.trainer.recipes.sft_settings import SftSettings
from services.trainer.recipes.splits import prompt_completion
from tests.tiny_models import build_tokenizer

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "support_pairs.jsonl"
SMALL: dict[str, Any] = {
    "hidden_size": 384, "intermediate_size": 1024, "num_hidden_layers": 6, "num_attention_heads": 6,
    "num_key_value_heads": 2, "max_position_embeddings": 2048, "tie_word_embeddings": True,
}  # fmt: skip
QWEN2_5_0_5B: dict[str, Any] = {
    "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
    "num_key_value_heads": 2, "vocab_size": 151_936, "max_position_embeddings": 4096, "tie_word_embeddings": True,
}  # fmt: skip


def rows() -> list[dict[str, Any]]:
    """The example pairs as the recipe's conversational prompt-completion rows."""
    out = []
    for i, line in enumerate(EXAMPLES.read_text().splitlines()):
        pair = json.loads(line)
        messages = [
            {"role": "system", "content": pair["system_prompt"]}, {"role": "user", "content": pair["input"]},
            {"role": "assistant", "content": pair["output"]},
        ]  # fmt: skip
        out.append(prompt_completion(json.dumps({"messages": messages}), f"{EXAMPLES.name}:{i + 1}"))
    return out


def build_student(size: str, directory: Path) -> Path:
    """The student's directory: a model saved there from a config (small, 0.5b), or the demo's SmolLM2."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    if size == "smollm2":
        from distillery.client import home

        path = home() / "models" / "SmolLM2-135M-Instruct"
        if not path.is_dir():
            raise SystemExit(
                f"{path} is not there: run `make run` once (it fetches the demo's student), or pick --size small"
            )
        return path
    build_tokenizer(directory)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    torch.manual_seed(0)
    ids = {"eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id, "bos_token_id": None}
    if size == "small":
        LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), **SMALL, **ids)).save_pretrained(directory)
    else:
        Qwen2ForCausalLM(Qwen2Config(**QWEN2_5_0_5B, **ids)).save_pretrained(directory)
    return directory


def load(student: Path, use_gpu: bool) -> tuple[Any, Any, bool]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    bf16, dtype = trl_configs.precision(use_gpu)
    model = AutoModelForCausalLM.from_pretrained(student, dtype=dtype)
    if use_gpu:
        model = model.to("cuda")
    torch.manual_seed(0)  # the LoRA adapter's initial weights: the same on both sides
    return model, AutoTokenizer.from_pretrained(student), bf16


def platform(student: Path, data: list[dict[str, Any]], settings: SftSettings, out: Path, use_gpu: bool) -> dict:
    """The recipe's trainer (``recipes/sft.recipe_trainer``), trained for ``settings.max_steps`` steps."""
    model, tokenizer, bf16 = load(student, use_gpu)
    trainer, counter, speed = recipe_trainer(
        settings, model, trl_configs.lora_config(settings), tokenizer, data, data[:8], out, use_gpu=use_gpu,
        bf16=bf16, save_checkpoints=False,
    )  # fmt: skip
    runtime = trainer.train().metrics["train_runtime"]
    return {"tokens_per_second": counter.real / runtime, "non_padding": counter.non_padding_fraction, **speed}


def plain_trl(student: Path, data: list[dict[str, Any]], settings: SftSettings, out: Path, use_gpu: bool) -> dict:
    """What a user writes with trl: ``SFTTrainer`` and ``SFTConfig`` with the same shared settings."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    model, tokenizer, bf16 = load(student, use_gpu)
    speed = sft_packing.choose(model, SftSettings(disable_packing=True), use_gpu, bf16)  # checkpointing as ours
    trainer = SFTTrainer(
        model=model, processing_class=tokenizer, train_dataset=Dataset.from_list(data),
        args=SFTConfig(
            output_dir=str(out), per_device_train_batch_size=settings.batch_size, max_length=settings.max_seq_length,
            max_steps=settings.max_steps, learning_rate=settings.learning_rate, bf16=bf16, use_cpu=not use_gpu,
            gradient_checkpointing=speed["gradient_checkpointing"], report_to="none", disable_tqdm=True,
            seed=settings.seed, data_seed=settings.seed,
        ),
        peft_config=LoraConfig(
            r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout,
            target_modules="all-linear", task_type="CAUSAL_LM",
        ),
    )  # fmt: skip
    counter = sft_packing.count_tokens(trainer)  # counts only: the batches are trl's own
    runtime = trainer.train().metrics["train_runtime"]
    return {"tokens_per_second": counter.real / runtime, "non_padding": counter.non_padding_fraction}


def main(argv: list[str] | None = None) -> None:
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(prog="python -m bench.bench_sft_vs_trl", description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=["small", "smollm2", "0.5b"], default="0.5b" if cuda else "small")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-seq-length", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=5, help="runs of each, alternating")
    args = parser.parse_args(argv)
    settings = SftSettings(
        batch_size=args.batch_size, max_seq_length=args.max_seq_length, max_steps=args.steps, seed=0
    )  # fmt: skip
    data = rows()
    results: dict[str, list[dict]] = {"platform": [], "plain": []}
    with tempfile.TemporaryDirectory() as tmp:
        student = build_student(args.size, Path(tmp) / "student")
        for run in (platform, plain_trl):  # a step of each first, untimed: the process's first steps are slow
            run(student, data, dataclasses.replace(settings, max_steps=1), Path(tmp) / "warmup", cuda)
        for round_ in range(args.rounds):
            order = ("platform", "plain") if round_ % 2 == 0 else ("plain", "platform")
            for name in order:
                run = platform if name == "platform" else plain_trl
                if cuda:
                    torch.cuda.reset_peak_memory_stats()
                result = run(student, data, settings, Path(tmp) / f"{name}{round_}", cuda)
                if cuda:
                    result["gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
                results[name].append(result)
                print(f"round {round_ + 1} {name}: {result['tokens_per_second']:.0f} real tokens/s", flush=True)
    ours = statistics.median(r["tokens_per_second"] for r in results["platform"])
    theirs = statistics.median(r["tokens_per_second"] for r in results["plain"])
    choices = results["platform"][0]
    device = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"student: {args.size}, {device}; {len(data)} rows of {EXAMPLES.name}, batch {args.batch_size}, "
          f"max_seq_length {args.max_seq_length}, {args.steps} steps, LoRA r={settings.lora_r}, "
          f"{args.rounds} alternating runs each (medians)")  # fmt: skip
    print(f"recipe's choices: packing={choices['packing']} attention={choices['attention']} bf16={choices['bf16']} "
          f"liger={choices['liger']} gradient_checkpointing={choices['gradient_checkpointing']}")  # fmt: skip
    for name, label in (("platform", "platform recipe"), ("plain", "plain trl      ")):
        runs = results[name]
        tps = statistics.median(r["tokens_per_second"] for r in runs)
        memory = f", peak GPU memory {max(r['gpu_memory_gib'] for r in runs):.2f} GiB" if cuda else ""
        print(f"{label}: {tps:8.0f} real tokens/s, non-padding fraction {runs[0]['non_padding']:.3f}{memory}")
    print(f"tokens/s ratio platform / plain trl: {ours / theirs:.2f}")
    print(f"runs (tokens/s): platform {[round(r['tokens_per_second']) for r in results['platform']]}, "
          f"plain {[round(r['tokens_per_second']) for r in results['plain']]}")  # fmt: skip


if __name__ == "__main__":
    main()
