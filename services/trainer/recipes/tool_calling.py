"""The tool-calling recipe: what the Ray job of a "distill-tools" run runs (SFT, or SFT then GRPO).

    python -m services.trainer.recipes.tool_calling --spec-key tenants/<t>/runs/<run>/spec.json

The spec (JSON in the bucket of DISTILLERY_S3_BUCKET): ``run_id``, ``tenant_id``,
``student_model``, ``train_key`` and ``eval_key`` (canonical tool-call JSONL, see
``services/ingest/tool_rows.py``), ``output_prefix``, ``sft`` (resolved ``SftSettings``),
``grpo`` (resolved ``GrpoSettings``, or null for SFT only), ``num_workers``, ``use_gpu``.

The driver checks the settings and the student, then runs the stages below in a
one-worker Ray Train ``TorchTrainer``: the worker is where Ray puts the GPU when
``use_gpu`` is set (the job's driver runs on the head node, which may have none). One
worker whatever ``num_workers`` says: every stage but SFT generates, and several ranks
would each generate the same evaluations. The stages, in order (``run``):

1. read both splits; an eval example is a row's turns before its first assistant turn
   (the prompt) and that turn's calls (``[]`` when it answered in text: no call wanted);
2. pick how the student renders tools (``tool_format.detect``: its own template, or the
   fallback) and tokenize the train and eval rows with the loss on assistant turns only;
3. evaluate the base student: greedy generation on the eval prompts, ``tool_rewards.score``
   -> metrics ``base_<rate>``;
4. SFT with trl's ``SFTTrainer`` on the pre-tokenized rows (``input_ids`` +
   ``assistant_masks``), LoRA unless ``sft.full_finetune``; eval loss before and after;
   evaluate -> ``sft_<rate>``;
5. with ``grpo``: a reward dry run (a few training prompts, ``num_generations`` samples
   each at the GRPO temperature); when no prompt's samples differ in total reward it
   stops with ``rewards_without_variance``. Then trl's ``GRPOTrainer`` from the SFT model
   with ``tool_rewards.REWARD_FUNCTIONS``/``REWARD_WEIGHTS`` on text prompts (the tools
   rendered into them here: trl does not pass per-row tools to the template) and the
   columns ``tools`` and ``expected_calls``. LoRA goes on training the SFT adapter (with
   ``beta > 0`` trl keeps a frozen copy of it as the reference); a full fine-tune is saved
   and reloaded first so trl's reference model is the SFT model, not the base. Step time
   is split into generation (trl's sampling call) and the rest; evaluate -> ``grpo_<rate>``;
6. upload the model (adapter or full weights, tokenizer, ``training_config.json`` with
   the ``tool_format``, its system prompt and the decoding its evaluation used: ``Generate``
   asks the model exactly so) to ``<output_prefix>/model/`` and write ``result.json`` last,
   with ``tools_json``: the tools it was trained with, in training order, as JSON text (the
   model is registered with them).

Progress goes to the trainer service (``progress.ProgressPush``) as one step count over
SFT and GRPO together, with a log line when each stage begins. There are no mid-run
checkpoints: a job that fails is not retried by Ray Train, and a job submitted again
starts over. Failures that retrying cannot fix end in ``<output_prefix>/error.json``
(``{"code", "message", "field"}``); a cancel (SIGINT) ends without one.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import math
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from services.common import decoding, tool_calls, tool_format, tool_rewards
from services.common.objects import ObjectStore
from services.common.settings import S3Settings
from services.common.tool_format import ToolFormat
from services.trainer.recipes import failures
from services.trainer.recipes.failures import RunFailure
from services.trainer.recipes.grpo_settings import GrpoSettings
from services.trainer.recipes.sft import (
    Watch,
    checkpoint_storage,
    drive,
    read_split,
    scaling,
    start_ray,
    upload_dir,
)
from services.trainer.recipes.sft_settings import SftSettings

log = logging.getLogger("distillery.recipes.tool_calling")

REWARDS_WITHOUT_VARIANCE = "rewards_without_variance"
DRY_RUN_PROMPTS = 4
EVAL_MIN_NEW_TOKENS, EVAL_MAX_NEW_TOKENS = 96, 512
RATES = ("valid_call_rate", "right_tool_rate", "schema_valid_rate", "args_match_rate", "no_call_rate", "correct_rate")


def main(argv: list[str] | None = None) -> int:
    return drive(argv, "python -m services.trainer.recipes.tool_calling", check_settings, fit)


def check_settings(spec: dict[str, Any]) -> None:
    SftSettings(**spec["sft"])
    if spec.get("grpo") is not None:
        GrpoSettings(**spec["grpo"])


def fit(spec: dict[str, Any], s3: S3Settings) -> None:
    from ray.train import FailureConfig, RunConfig
    from ray.train.torch import TorchTrainer

    start_ray()
    storage = checkpoint_storage(s3)
    if int(spec.get("num_workers", 1)) != 1:
        log.info("the tool-calling recipe trains on one worker (num_workers=%s asked)", spec.get("num_workers"))
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=spec,
        scaling_config=scaling(1, bool(spec.get("use_gpu"))),
        run_config=RunConfig(
            name=spec["run_id"], storage_path=f"{s3.bucket}/{spec['output_prefix']}/ray", storage_filesystem=storage,
            failure_config=FailureConfig(max_failures=0),
        ),
    )  # fmt: skip
    trainer.fit()


def train_loop(spec: dict[str, Any]) -> None:
    """The Ray Train worker."""
    attempt(spec, ObjectStore(S3Settings.from_env()))


def attempt(spec: dict[str, Any], store: ObjectStore) -> None:
    """``run`` in a scratch directory; failures that another attempt cannot fix go to error.json."""
    workdir = Path(tempfile.mkdtemp(prefix=f"{spec['run_id']}-"))
    try:
        run(spec, store, workdir)
    except RunFailure as failure:
        log.error("run %s failed: %s: %s", spec["run_id"], failure.code, failure.message)
        store.put_bytes(
            f"{spec['output_prefix']}/error.json", json.dumps(failure.to_dict()).encode(), "application/json"
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run(spec: dict[str, Any], store: ObjectStore, workdir: Path) -> None:
    """Every stage of the recipe, in order (module docstring)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from services.trainer.recipes.progress import ProgressPush

    sft = SftSettings(**spec["sft"])
    grpo = GrpoSettings(**spec["grpo"]) if spec.get("grpo") is not None else None
    prefix, use_gpu = spec["output_prefix"], bool(spec.get("use_gpu"))
    bf16 = use_gpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    dtype = torch.bfloat16 if bf16 else torch.float32

    # --- 1, 2. data, the tool format, tokens with the loss on assistant turns ---
    tokenizer = AutoTokenizer.from_pretrained(spec["student_model"])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    fmt = tool_format.detect(tokenizer)
    log.info("run %s: tool format %s", spec["run_id"], fmt.note)
    train_rows = load_rows(store, spec["train_key"], "train")
    eval_rows = load_rows(store, spec["eval_key"], "eval")
    train_set, train_left_out = sft_rows(train_rows, fmt, tokenizer, sft.max_seq_length, "train")
    eval_set, eval_left_out = sft_rows(eval_rows, fmt, tokenizer, sft.max_seq_length, "eval")
    examples = eval_examples(eval_rows, fmt, tokenizer)
    max_new_tokens = eval_max_new_tokens(eval_rows, fmt, tokenizer)
    metrics: dict[str, float] = {
        "train_rows": len(train_set), "eval_rows": len(eval_set), "train_rows_left_out": train_left_out,
        "eval_rows_left_out": eval_left_out, "eval_prompts": len(examples["prompts"]),
        "eval_call_prompts": sum(1 for e in examples["expected"] if e),
    }  # fmt: skip

    progress = ProgressPush.from_env(spec["run_id"], rank=0)
    try:
        # --- 3. the base student ---
        model: Any = AutoModelForCausalLM.from_pretrained(spec["student_model"], dtype=dtype)
        if use_gpu and torch.cuda.is_available():
            model = model.to("cuda")
        stage_log(progress, f"evaluating the base student on {len(examples['prompts'])} prompts ({fmt.name} format)")
        metrics.update(evaluate(model, tokenizer, examples, max_new_tokens, "base", progress, 0))

        # --- 4. SFT ---
        sft_steps = sft.max_steps or sft.epochs * math.ceil(
            math.ceil(len(train_set) / sft.batch_size) / sft.gradient_accumulation_steps
        )
        total = sft_steps + (grpo.max_steps if grpo else 0)
        stage_log(progress, f"SFT: {sft_steps} steps on {len(train_set)} conversations")
        trainer = sft_trainer(model, tokenizer, train_set, eval_set, sft, workdir, use_gpu, bf16)
        watch = Watch()
        trainer.add_callback(watch)
        trainer.add_callback(StageProgress(progress, 0, total))
        metrics["eval_loss_before"] = float(trainer.evaluate()["eval_loss"])
        output = trainer.train()
        if progress.stopped_by_service:
            log.info("run %s: the trainer says the run is final; stopping without a result", spec["run_id"])
            return
        if watch.diverged is not None:
            raise failures.diverged(*watch.diverged)
        metrics["eval_loss_after"] = after = float(trainer.evaluate()["eval_loss"])
        if not math.isfinite(after):
            raise failures.diverged(trainer.state.global_step, after)
        metrics.update(
            train_loss=float(output.training_loss), steps=trainer.state.global_step,
            train_runtime_s=float(output.metrics.get("train_runtime", 0.0)),
        )  # fmt: skip
        model = trainer.model
        del trainer  # its optimizer state
        gc.collect()
        stage_log(progress, "evaluating the SFT model")
        metrics.update(evaluate(model, tokenizer, examples, max_new_tokens, "sft", progress, sft_steps))

        # --- 5. GRPO ---
        if grpo is not None:
            model = grpo_start(model, workdir / "sft")
            dataset = grpo_rows(train_rows, fmt, tokenizer)
            stage_log(progress, f"GRPO reward dry run: {DRY_RUN_PROMPTS} prompts x {grpo.num_generations} completions")
            metrics.update(reward_dry_run(model, tokenizer, dataset, grpo, seed=sft.seed))
            stage_log(progress, f"GRPO: {grpo.max_steps} steps, {grpo.completions_per_step} completions a step")
            model, grpo_metrics = grpo_train(model, tokenizer, dataset, grpo, sft.seed, workdir, use_gpu, bf16,
                                             [StageProgress(progress, sft_steps, total)])  # fmt: skip
            if progress.stopped_by_service:
                log.info("run %s: the trainer says the run is final; stopping without a result", spec["run_id"])
                return
            metrics.update(grpo_metrics)
            stage_log(progress, "evaluating the GRPO model")
            metrics.update(evaluate(model, tokenizer, examples, max_new_tokens, "grpo", progress, total))
    finally:
        progress.close()

    # --- 6. the model, then result.json (written last: it says the run is done) ---
    model_dir = workdir / "model"
    if sft.full_finetune:
        model.save_pretrained(model_dir)
    else:
        model.save_pretrained(model_dir, selected_adapters=["default"])  # not trl's "ref" copy (beta > 0)
    tokenizer.save_pretrained(model_dir)
    training_config = {
        "sft": dataclasses.asdict(sft), "grpo": dataclasses.asdict(grpo) if grpo else None,
        "student_model": spec["student_model"], "artifact_kind": sft.artifact_kind, "use_gpu": use_gpu,
        "tool_format": fmt.name, "tool_format_note": fmt.note, "output_format": "<tool_call> blocks (Hermes style)",
        "tool_format_detail": fmt.to_dict(),
        "train_rows": len(train_set), "eval_rows": len(eval_set), "system_prompt": shared_system_prompt(train_rows),
        "decoding": {"max_new_tokens": max_new_tokens, "temperature": 0.0},
    }  # fmt: skip
    (model_dir / "training_config.json").write_text(json.dumps(training_config, indent=2))
    upload_dir(store, model_dir, f"{prefix}/model")
    result = {
        "metrics": metrics, "artifact_kind": sft.artifact_kind,
        "artifact_uri": f"s3://{store.bucket}/{prefix}/model/", "training_config": training_config,
        "tools_json": [tool_format.tool_json(tool) for tool in trained_tools(train_rows)],
    }  # fmt: skip
    store.put_bytes(f"{prefix}/result.json", json.dumps(result, indent=2).encode(), "application/json")
    log.info("run %s: %s", spec["run_id"], json.dumps(metrics))


# -- 1. data --------------------------------------------------------------------------------------


def load_rows(store: ObjectStore, key: str, name: str) -> list[dict[str, Any]]:
    """A split's canonical tool-call rows (``{"messages", "tools"}``), each with an assistant turn."""
    text = read_split(store, key, name)
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            messages, tools = row["messages"], row["tools"]
        except (ValueError, KeyError, TypeError):
            raise failures.invalid_dataset(
                f"{name} split, line {number}: not a JSON object with messages and tools"
            ) from None
        if not (isinstance(messages, list) and isinstance(tools, list) and all(isinstance(m, dict) for m in messages)):
            raise failures.invalid_dataset(f"{name} split, line {number}: messages and tools must be lists")
        if not any(m.get("role") == "assistant" for m in messages):
            raise failures.invalid_dataset(f"{name} split, line {number}: the row has no assistant turn")
        rows.append({"messages": messages, "tools": tools})
    if not rows:
        raise failures.invalid_dataset(f"the {name} split has no rows")
    return rows


def eval_examples(rows: list[dict[str, Any]], fmt: ToolFormat, tokenizer: Any) -> dict[str, list[Any]]:
    """Eval prompts (text), the calls each wants ([]: none) and the tools it offers, in row order."""
    out: dict[str, list[Any]] = {"prompts": [], "expected": [], "tools": []}
    for row in rows:
        _, expected = tool_format.prompt_and_expected(row["messages"])
        try:
            out["prompts"].append(tool_format.prompt_text(fmt, tokenizer, row["messages"], row["tools"]))
        except tool_format.RenderError as err:
            raise unrenderable(str(err.__cause__ or err)) from err
        out["expected"].append(expected)
        out["tools"].append(row["tools"])
    return out


def eval_max_new_tokens(rows: list[dict[str, Any]], fmt: ToolFormat, tokenizer: Any) -> int:
    """Room for the longest wanted call turn and a little more, within [96, 512] tokens."""
    longest = 0
    for row in rows:
        _, expected = tool_format.prompt_and_expected(row["messages"])
        if expected:
            calls = [tool_calls.Call(c["name"], c["arguments"]) for c in expected]
            longest = max(
                longest, len(tokenizer(tool_calls.render_calls(calls), add_special_tokens=False)["input_ids"])
            )
    return min(EVAL_MAX_NEW_TOKENS, max(EVAL_MIN_NEW_TOKENS, longest + 16))


# -- 2. tokens for SFT ----------------------------------------------------------------------------


def sft_rows(
    rows: list[dict[str, Any]], fmt: ToolFormat, tokenizer: Any, max_seq_length: int, name: str
) -> tuple[list[dict[str, list[int]]], int]:
    """Pre-tokenized rows for trl (``input_ids``, ``assistant_masks``), and how many were left out.

    Left out: rows over ``max_seq_length`` tokens and rows the template cannot split into turns."""
    out, left_out, shortest = [], 0, math.inf
    for row in rows:
        try:
            ids, mask = tool_format.tokenize(fmt, tokenizer, row["messages"], row["tools"])
        except tool_format.RenderError as err:
            log.warning("%s row left out: %s", name, err)
            left_out += 1
            continue
        shortest = min(shortest, len(ids))
        if len(ids) > max_seq_length or 1 not in mask:
            left_out += 1
            continue
        out.append({"input_ids": ids, "assistant_masks": mask})
    if not out and not math.isfinite(shortest):
        raise unrenderable(f"no conversation of the {name} split renders turn by turn")
    if not out:
        raise failures.invalid_dataset(
            f"no row of the {name} split fits in sft.max_seq_length={max_seq_length} tokens (the shortest has "
            f"{shortest}): raise sft.max_seq_length or shorten the rows"
        )
    return out, left_out


def shared_system_prompt(rows: list[dict[str, Any]]) -> str:
    """The system message every training conversation opens with ("" when they differ or some have none):
    ``Generate`` puts it first when a request brings no system message, so the model is asked as it was trained."""
    found = {
        row["messages"][0].get("content") or "" if row["messages"][0]["role"] == "system" else "" for row in rows
    }  # fmt: skip
    return found.pop() if len(found) == 1 else ""


def trained_tools(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The tools the model was trained with, each once by name, in the order the training rows first offer them,
    as the rows hold them: registered with the model, they are what ``Generate`` offers it by default."""
    seen: dict[str, dict[str, Any]] = {}
    for row in rows:
        for tool in row["tools"]:
            seen.setdefault(tool["name"], tool)
    return list(seen.values())


def unrenderable(why: str) -> RunFailure:
    return RunFailure(
        failures.UNKNOWN_MODEL,
        f"the student's chat template cannot render tool conversations ({why}): pick a chat model whose template "
        "takes system (or user), user and assistant turns in order",
        "student_model",
    )


# -- 3. evaluation --------------------------------------------------------------------------------


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
    progress: Any = None, step: int = 0,
) -> dict[str, float]:  # fmt: skip
    """Greedy outputs on the eval prompts, scored: ``<stage>_<rate>`` for each rate of ``tool_rewards.score``."""
    started = time.monotonic()
    outputs = generate(model, tokenizer, examples["prompts"], max_new_tokens=max_new_tokens)
    scores = tool_rewards.score(outputs, examples["expected"], examples["tools"])
    rates = {f"{stage}_{name}": scores[name] for name in RATES}
    log.info("%s eval (%.1f s): %s; first output: %r", stage, time.monotonic() - started, rates, outputs[:1])
    if progress is not None:
        from distillery.trainer.v1 import trainer_pb2

        progress.put(trainer_pb2.RunEvent(metrics=trainer_pb2.Metrics(step=step, values=rates)))
    return rates


# -- 4. SFT ---------------------------------------------------------------------------------------


def sft_trainer(
    model: Any, tokenizer: Any, train_set: list[dict[str, Any]], eval_set: list[dict[str, Any]],
    settings: SftSettings, workdir: Path, use_gpu: bool, bf16: bool,
) -> Any:  # fmt: skip
    """trl's SFTTrainer on pre-tokenized rows: ``assistant_masks`` make the labels (-100 elsewhere)."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import EarlyStoppingCallback
    from trl import SFTConfig, SFTTrainer

    evals = settings.eval_every_steps > 0
    config = SFTConfig(
        output_dir=str(workdir / "sft-out"), use_cpu=not use_gpu, bf16=bf16, activation_checkpointing=use_gpu,
        seed=settings.seed, data_seed=settings.seed, learning_rate=settings.learning_rate,
        num_train_epochs=settings.epochs, max_steps=settings.max_steps or -1,
        per_device_train_batch_size=settings.batch_size, per_device_eval_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation_steps, max_length=settings.max_seq_length,
        save_strategy="steps" if settings.early_stopping_patience else "no", save_steps=settings.checkpoint_every_steps,
        save_total_limit=2, eval_strategy="steps" if evals else "no", eval_steps=settings.eval_every_steps or None,
        load_best_model_at_end=settings.early_stopping_patience > 0, metric_for_best_model="eval_loss",
        greater_is_better=False, logging_steps=1, logging_nan_inf_filter=False, report_to=[], disable_tqdm=True,
        dataloader_num_workers=0,
    )  # fmt: skip
    peft_config = None
    if not settings.full_finetune:
        peft_config = LoraConfig(
            r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout,
            target_modules="all-linear", task_type="CAUSAL_LM",
        )  # fmt: skip
    callbacks: list[Any] = []
    if settings.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=settings.early_stopping_patience))
    return SFTTrainer(
        model=model, args=config, processing_class=tokenizer, peft_config=peft_config, callbacks=callbacks,
        train_dataset=Dataset.from_list(train_set), eval_dataset=Dataset.from_list(eval_set),
    )  # fmt: skip


# -- 5. GRPO --------------------------------------------------------------------------------------


def grpo_start(model: Any, directory: Path) -> Any:
    """The model GRPO starts from: the SFT adapter as it is (trl copies it as the reference when beta > 0), or
    the full SFT model saved and reloaded, so that trl's reference (loaded by the model's name) is it, not the base."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    if isinstance(model, PeftModel):
        return model
    model.save_pretrained(directory)
    return AutoModelForCausalLM.from_pretrained(directory, dtype=model.dtype).to(model.device)


def grpo_rows(rows: list[dict[str, Any]], fmt: ToolFormat, tokenizer: Any) -> list[dict[str, str]]:
    """GRPO rows: the prompt as text (tools rendered in), and the reward columns as JSON text."""
    out = []
    for row in rows:
        _, expected = tool_format.prompt_and_expected(row["messages"])
        try:
            prompt = tool_format.prompt_text(fmt, tokenizer, row["messages"], row["tools"])
        except tool_format.RenderError as err:
            raise unrenderable(str(err.__cause__ or err)) from err
        out.append({
            "prompt": tool_format.without_added_bos(tokenizer, prompt),
            "tools": json.dumps(row["tools"]), "expected_calls": json.dumps(expected),
        })  # fmt: skip
    return out


def total_rewards(rows: list[dict[str, str]], completions: list[str]) -> list[float]:
    """Each completion's weighted reward sum, as GRPOTrainer adds them (``rows[i]`` is completion i's row)."""
    columns = {"tools": [r["tools"] for r in rows], "expected_calls": [r["expected_calls"] for r in rows]}
    prompts = [r["prompt"] for r in rows]
    totals = [0.0] * len(completions)
    for function, weight in zip(tool_rewards.REWARD_FUNCTIONS, tool_rewards.REWARD_WEIGHTS, strict=True):
        for i, value in enumerate(function(prompts, completions, **columns)):
            totals[i] += weight * value
    return totals


def reward_dry_run(
    model: Any, tokenizer: Any, rows: list[dict[str, str]], settings: GrpoSettings, seed: int
) -> dict[str, float]:
    """Sample a few groups with the GRPO settings; refuse (``rewards_without_variance``) when no group varies."""
    import torch

    picked = random.Random(seed).sample(rows, min(DRY_RUN_PROMPTS, len(rows)))
    torch.manual_seed(seed)
    completions = generate(
        model, tokenizer, [r["prompt"] for r in picked], max_new_tokens=settings.max_completion_length,
        temperature=settings.temperature, per_prompt=settings.num_generations,
    )  # fmt: skip
    expanded = [row for row in picked for _ in range(settings.num_generations)]
    totals = total_rewards(expanded, completions)
    groups = [totals[i : i + settings.num_generations] for i in range(0, len(totals), settings.num_generations)]
    varied = sum(1 for group in groups if max(group) - min(group) > 1e-9)
    log.info("reward dry run: %d of %d groups vary; totals %s", varied, len(groups), groups)
    if not varied:
        same = ", ".join(f"{group[0]:g}" for group in groups)
        raise RunFailure(
            REWARDS_WITHOUT_VARIANCE,
            f"the reward dry run sampled {settings.num_generations} completions for each of {len(groups)} training "
            f"prompts at grpo.temperature={settings.temperature:g}, and every prompt's completions got the same "
            f"total reward ({same}): GRPO learns only from differences between them, so it would not change the "
            "model. Give more diverse seed prompts, raise grpo.temperature (e.g. 1.2) or grpo.num_generations "
            "(e.g. 8), or run SFT only",
            "grpo.temperature",
        )
    return {
        "dry_run_prompts": len(groups), "dry_run_groups_with_variance": varied,
        "dry_run_reward_mean": sum(totals) / len(totals),
    }  # fmt: skip


def grpo_train(
    model: Any, tokenizer: Any, rows: list[dict[str, str]], settings: GrpoSettings, seed: int, workdir: Path,
    use_gpu: bool, bf16: bool, callbacks: list[Any],
) -> tuple[Any, dict[str, float]]:  # fmt: skip
    """trl's GRPOTrainer from ``model`` (the SFT model, or its adapter); returns the trained model and metrics."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    config = GRPOConfig(
        output_dir=str(workdir / "grpo-out"), use_cpu=not use_gpu, bf16=bf16, activation_checkpointing=use_gpu,
        seed=seed, learning_rate=settings.learning_rate, max_steps=settings.max_steps,
        per_device_train_batch_size=settings.completions_per_step, num_generations=settings.num_generations,
        max_completion_length=settings.max_completion_length, temperature=settings.temperature, beta=settings.beta,
        reward_weights=list(tool_rewards.REWARD_WEIGHTS), logging_steps=1, logging_nan_inf_filter=False,
        save_strategy="no", report_to=[], disable_tqdm=True, dataloader_num_workers=0,
    )  # fmt: skip
    times = StepTimes()
    diverged = GrpoWatch()
    trainer = GRPOTrainer(
        model=model, reward_funcs=list[Any](tool_rewards.REWARD_FUNCTIONS), args=config, processing_class=tokenizer,
        train_dataset=Dataset.from_list(rows), callbacks=[times, diverged, *callbacks],
    )  # fmt: skip
    times.wrap(trainer)
    output = trainer.train()
    if diverged.at is not None:
        raise RunFailure(
            failures.TRAINING_DIVERGED,
            f"the GRPO loss became {diverged.at[1]} at step {diverged.at[0]}: lower grpo.learning_rate and try again",
            "grpo.learning_rate",
        )
    rewards = [float(entry["reward"]) for entry in trainer.state.log_history if "reward" in entry]
    quarter = max(len(rewards) // 4, 1)  # the mean reward over the first and the last quarter of the logged steps
    steps = max(len(times.step_s), 1)
    generation = times.generation_s / steps
    metrics = {
        "grpo_steps": trainer.state.global_step, "grpo_runtime_s": float(output.metrics.get("train_runtime", 0.0)),
        "grpo_generation_s_per_step": generation,
        "grpo_training_s_per_step": max(sum(times.step_s) / steps - generation, 0.0),
        "grpo_reward_first": rewards[0] if rewards else math.nan,
        "grpo_reward_last": rewards[-1] if rewards else math.nan,
        "grpo_reward_first_quarter": sum(rewards[:quarter]) / quarter if rewards else math.nan,
        "grpo_reward_last_quarter": sum(rewards[-quarter:]) / quarter if rewards else math.nan,
    }  # fmt: skip
    return trainer.model, metrics


class StepTimes(TrainerCallback):
    """Seconds per optimizer step, and the part of them spent in trl's sampling call (``_generate``)."""

    def __init__(self) -> None:
        self.step_s: list[float] = []
        self.generation_s = 0.0
        self._began = 0.0

    def wrap(self, trainer: Any) -> None:
        sample = trainer._generate

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return sample(*args, **kwargs)
            finally:
                self.generation_s += time.perf_counter() - started

        trainer._generate = timed

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._began = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.step_s.append(time.perf_counter() - self._began)


class GrpoWatch(TrainerCallback):
    """Stops GRPO at a non-finite loss."""

    def __init__(self) -> None:
        self.at: tuple[int, float] | None = None

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        loss = (logs or {}).get("loss")
        if isinstance(loss, int | float) and not math.isfinite(loss):
            self.at = (state.global_step, float(loss))
            control.should_training_stop = True


# -- progress -------------------------------------------------------------------------------------


class StageProgress(TrainerCallback):
    """Hands a stage's steps to ``ProgressPush`` as steps of the whole run: ``offset`` + the stage's, of ``total``."""

    def __init__(self, push: Any, offset: int, total: int) -> None:
        self.push, self.offset, self.total = push, offset, total

    def _run_state(self, state: Any) -> Any:
        return dataclasses.replace(state, global_step=self.offset + state.global_step, max_steps=self.total)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.push.on_train_begin(args, self._run_state(state), control)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.push.on_step_end(args, self._run_state(state), control)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        logs = dict(logs or {})
        if isinstance(logs.get("reward"), int | float) and self.push.sending:
            from distillery.trainer.v1 import trainer_pb2

            values = {"grpo_reward": float(logs["reward"])}
            metrics = trainer_pb2.Metrics(step=self.offset + state.global_step, values=values)
            self.push.put(trainer_pb2.RunEvent(metrics=metrics))
        self.push.on_log(args, self._run_state(state), control, logs=logs)


def stage_log(push: Any, text: str) -> None:
    """A log line for the run's events (and this job's log): which stage begins."""
    from distillery.trainer.v1 import trainer_pb2

    log.info("%s", text)
    push.put(trainer_pb2.RunEvent(log=trainer_pb2.LogLine(text=text)))


if __name__ == "__main__":
    sys.exit(main())
