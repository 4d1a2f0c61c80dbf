"""The fixed evaluation cost of an SFT run, before and after its cuts, against the run's training time.

Builds what the SFT recipe builds for a tiny run (a tiny Llama of tests/tiny_models.py, LoRA, the colour pairs,
``STEPS`` steps, the recipe's eval cadence and early stopping: ``evals``, ``trl_configs``), without Ray, and
times each evaluation of a run:

- eval loss before training (one pass over the eval split);
- the base student's answers to the eval prompts (``answers.evaluate``): before, generated through the
  untrained LoRA layers; after, with the adapter off (``answers.adapter_off``: the same tokens, checked);
  after a warm-up, ``REPEATS`` times each, interleaved, the fastest of each;
- the evals while training (their ``eval_runtime``, inside the training time);
- eval loss after training: before, a second pass (``trainer.evaluate()``); after, the loss the eval of the
  best checkpoint measured (``watch.eval_loss``: the same number, checked);
- the final answers, asked of the saved model as ``Generate`` loads it (``answers.evaluate_served``).

Prints each, the fixed cost (everything but the evals while training) before and after, and the ratio.

    python -m bench.bench_eval_cost [--steps 24]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

STEPS = 24
EVAL_ROWS = 16
REPEATS = 3
COLOURS = {"red": "rouge", "blue": "bleu", "green": "vert", "white": "blanc", "black": "noir", "grey": "gris"}


def rows() -> list[dict[str, Any]]:
    from services.trainer.recipes.splits import prompt_completion

    lines = [
        {"messages": [
            {"role": "system", "content": "Translate the colour to French."},
            {"role": "user", "content": f"{english}, please ({i})"}, {"role": "assistant", "content": french},
        ]}
        for i in range(10) for english, french in COLOURS.items()
    ]  # fmt: skip
    return [prompt_completion(json.dumps(line), f"row {n}") for n, line in enumerate(lines)]


def timed(what: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    value = what()
    return value, time.perf_counter() - started


def measure(steps: int) -> None:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTTrainer

    from services.trainer.recipes import answers, evals, trl_configs
    from services.trainer.recipes.sft_settings import SftSettings
    from services.trainer.recipes.watch import eval_loss
    from tests.tiny_models import build_llama

    with tempfile.TemporaryDirectory(prefix="dst-bench-eval-", dir="/tmp") as tmp:
        work = Path(tmp)
        student = build_llama(work / "tiny-llama")
        data = rows()
        train_rows, eval_rows = data[EVAL_ROWS:], data[:EVAL_ROWS]
        tokenizer = AutoTokenizer.from_pretrained(student)
        settings = SftSettings(max_steps=steps, batch_size=4, learning_rate=5e-3, lora_r=8)
        every = evals.cadence(settings, steps)
        patience = evals.patience(settings, every)
        config = trl_configs.sft_config(
            settings, work / "out", use_gpu=False, bf16=False, save_checkpoints=True, every=every, patience=patience
        )
        torch.manual_seed(0)
        trainer = SFTTrainer(
            model=AutoModelForCausalLM.from_pretrained(student), args=config, processing_class=tokenizer,
            peft_config=trl_configs.lora_config(settings), train_dataset=Dataset.from_list(train_rows),
            eval_dataset=Dataset.from_list(eval_rows), callbacks=trl_configs.early_stopping(patience),
        )  # fmt: skip
        budget = answers.budget(eval_rows, tokenizer)
        model: Any = trainer.model
        _, loss_before_s = timed(trainer.evaluate)

        def through_adapter() -> list[str]:  # the base's answers as they were generated before the cut
            ends = answers.decoding.end_ids(model, tokenizer)
            model.eval()
            out = [answers.answer(model, tokenizer, r["prompt"], budget, ends)[0] for r in eval_rows]
            model.train()
            return out

        def adapter_off() -> list[str]:
            return [a["answer"] for a in answers.evaluate(model, tokenizer, eval_rows, budget, "base")[1]]

        through_adapter()  # warm up: the first generate pays one-time costs
        runs: dict[Any, list[tuple[list[str], float]]] = {through_adapter: [], adapter_off: []}
        for _ in range(REPEATS):  # interleaved: the machine's load falls on both alike
            for way in runs:
                runs[way].append(timed(way))
        base_old_s = min(s for _, s in runs[through_adapter])
        base_new_s = min(s for _, s in runs[adapter_off])
        same_answers = all(a == runs[through_adapter][0][0] for way in runs for a, _ in runs[way])

        output, train_s = timed(trainer.train)
        during_s = sum(e["eval_runtime"] for e in trainer.state.log_history if "eval_runtime" in e and e["step"] > 0)
        reused, after_new_s = timed(lambda: eval_loss(trainer))
        fresh, after_old_s = timed(lambda: trainer.evaluate()["eval_loss"])
        model_dir = work / "model"
        trainer.save_model(str(model_dir))
        tokenizer.save_pretrained(model_dir)
        _, final_s = timed(lambda: answers.evaluate_served(model_dir, str(student), True, eval_rows, budget, {}))

    fixed_old = loss_before_s + base_old_s + after_old_s + final_s
    fixed_new = loss_before_s + base_new_s + after_new_s + final_s
    print(f"tiny run: {len(train_rows)} train rows, {len(eval_rows)} eval rows, {trainer.state.global_step} steps "
          f"(evals every {every}, patience {patience}), answer budget {budget} tokens")  # fmt: skip
    print(f"{'evaluation':<44}{'before s':>10}{'after s':>10}")
    print(f"{'eval loss before training':<44}{loss_before_s:10.2f}{loss_before_s:10.2f}")
    print(f"{'base answers (' + str(len(eval_rows)) + ' prompts)':<44}{base_old_s:10.2f}{base_new_s:10.2f}")
    print(f"{'eval loss after training':<44}{after_old_s:10.2f}{after_new_s:10.2f}")
    print(f"{'final answers (the saved model, reloaded)':<44}{final_s:10.2f}{final_s:10.2f}")
    print(f"{'fixed evaluation cost':<44}{fixed_old:10.2f}{fixed_new:10.2f}")
    print(f"{'(evals while training, inside training)':<44}{during_s:10.2f}{during_s:10.2f}")
    print(f"training {train_s:.2f} s (train_runtime {output.metrics['train_runtime']:.2f} s); fixed cost / training: "
          f"{fixed_old / train_s:.2f} before, {fixed_new / train_s:.2f} after; after / before: "
          f"{fixed_new / fixed_old:.2f}")  # fmt: skip
    print(f"the same base answers: {same_answers}; the same eval loss after: reused {reused:.6f}, "
          f"a second pass {fresh:.6f}")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_eval_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=STEPS, help=f"training steps (default {STEPS})")
    args = parser.parse_args(argv if argv is not None else ([] if __name__ != "__main__" else None))
    measure(args.steps)


if __name__ == "__main__":
    main()
