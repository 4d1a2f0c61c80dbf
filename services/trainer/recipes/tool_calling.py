"""The tool-calling recipe: what the Ray job of a "distill-tools" run runs (SFT, or SFT then GRPO).

    python -m services.trainer.recipes.tool_calling --spec-key tenants/<t>/runs/<run>/spec.json

The spec is a ``job_spec.JobSpec`` (in the bucket of DISTILLERY_S3_BUCKET): its splits are
canonical tool-call JSONL (see ``services/ingest/tool_rows.py``) and its ``grpo`` is None for
SFT only. The driver (``job.drive``) checks the student, then runs the stages below in a
one-worker Ray Train ``TorchTrainer``: the worker is where Ray puts the GPU when
``use_gpu`` is set (the job's driver runs on the head node, which may have none). One
worker whatever ``num_workers`` says: every stage but SFT generates, and several ranks
would each generate the same evaluations. The stages, in order (``run``, top to bottom; the
helpers are ``tool_data.py``, ``tool_eval.py``, ``tool_grpo.py`` and ``tool_resume.py``):

1. read both splits; an eval example is a row's turns before its first assistant turn
   (the prompt) and that turn's calls (``[]`` when it answered in text: no call wanted);
2. pick how the student renders tools (``tool_format.detect``: its own template, or the
   fallback) and tokenize the train and eval rows with the loss on assistant turns only;
3. evaluate the base student: greedy generation on the eval prompts, ``tool_rewards.score``
   -> metrics ``base_<rate>`` (once per run: kept, with the eval loss before SFT, in ``eval_before.json``);
4. SFT with trl's ``SFTTrainer`` on the pre-tokenized rows (``input_ids`` +
   ``assistant_masks``), LoRA unless ``sft.full_finetune``; eval loss before and after; evals
   of the generated calls at a cadence with early stopping on their correct rate (``evals.BestByMetric``:
   metrics ``eval_<rate>``; the best weights are kept); a checkpoint every ``sft.checkpoint_every_steps``
   steps to S3 through Ray Train; evaluate -> ``sft_<rate>``; with ``grpo``, the SFT model and what SFT
   measured are kept under ``<output_prefix>/sft/``;
5. with ``grpo``: a reward dry run (a few training prompts, ``num_generations`` samples
   each at the GRPO temperature); when no prompt's samples differ in total reward it
   stops with ``rewards_without_variance``. Then trl's ``GRPOTrainer`` from the SFT model
   with ``tool_rewards.REWARD_FUNCTIONS``/``REWARD_WEIGHTS`` on text prompts (the tools
   rendered into them here: trl does not pass per-row tools to the template) and the
   columns ``tools`` and ``expected_calls``. LoRA goes on training the SFT adapter (with
   ``beta > 0`` trl keeps a frozen copy of it as the reference); a full fine-tune is saved
   and reloaded first so trl's reference model is the SFT model, not the base. Step time
   is split into generation (trl's sampling call) and the rest; completions come from ``grpo_generation``
   (vLLM on a GPU worker where it imports, else one batched ``generate`` a step with each prompt prefilled
   once; ``grpo_generation_engine`` in the training config); evals and early stopping as in SFT;
   evaluate -> ``grpo_<rate>``;
6. upload the model (adapter or full weights, tokenizer, ``training_config.json`` with
   the ``tool_format``, its system prompt and the decoding its evaluation used: ``Generate``
   asks the model exactly so) to ``<output_prefix>/model/`` and write ``result.json`` last,
   with ``tools_json``: the tools it was trained with, in training order, as JSON text (the
   model is registered with them).

Progress goes to the trainer service (``progress.ProgressPush``) as one step count over
SFT and GRPO together, with a log line when each stage begins. The job records when GRPO
begins (``job.enter_phase``), so running out of memory there names the GRPO settings.

Retries (``tool_resume.py``): Ray Train tries an attempt that raised or lost its worker again, twice
(``max_failures=2``), keeping the last two SFT checkpoints under ``<output_prefix>/ray/``. A retry during SFT
resumes from the last checkpoint (the run event ``resuming from the checkpoint at step N``) without
evaluating the base again. A retry during GRPO, which saves no checkpoints (its steps are few), starts GRPO
over (reward dry run included) from the SFT model kept in stage 4, without training SFT again. The evals
of generated calls keep their best weights in memory, so a resumed SFT tracks the best from the step it
resumed at: the evals before it are not in result.json's ``evals``, the best is one of those after it or
the final weights, and early stopping's patience counts afresh. Failures that retrying cannot fix end in
``<output_prefix>/error.json`` (``{"code", "message", "field"}``, written by the attempt, which is then not
retried); a cancel (SIGINT) ends without one.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import sys
from functools import partial
from pathlib import Path
from typing import Any

from services.common import tool_format
from services.common.objects import ObjectStore
from services.common.settings import S3Settings
from services.trainer.recipes import evals, failures, job, start_model, tool_resume, trl_configs
from services.trainer.recipes.grpo_generation import TRANSFORMERS, VLLM
from services.trainer.recipes.job_spec import JobSpec
from services.trainer.recipes.progress import ProgressPush, StageProgress, stage_log
from services.trainer.recipes.sft_settings import SftSettings
from services.trainer.recipes.tool_data import (
    eval_examples,
    eval_max_new_tokens,
    grpo_rows,
    load_rows,
    sft_rows,
    shared_system_prompt,
    trained_tools,
)
from services.trainer.recipes.tool_eval import RATES as RATES
from services.trainer.recipes.tool_eval import evaluate
from services.trainer.recipes.tool_grpo import DRY_RUN_PROMPTS, grpo_start, grpo_train, reward_dry_run
from services.trainer.recipes.watch import Watch, eval_loss

log = logging.getLogger("distillery.recipes.tool_calling")


def main(argv: list[str] | None = None) -> int:
    return job.drive(argv, "python -m services.trainer.recipes.tool_calling", fit)


def fit(spec: JobSpec, s3: S3Settings) -> None:
    if spec.num_workers != 1:
        log.info("the tool-calling recipe trains on one worker (num_workers=%s asked)", spec.num_workers)
    job.train_on_ray(train_loop, spec, s3, workers=1, max_failures=2, checkpoints_kept=2)


def train_loop(config: dict[str, Any]) -> None:
    """The Ray Train worker."""
    attempt(job.worker_spec(config), ObjectStore(S3Settings.from_env()), ray_train=True)


def attempt(spec: JobSpec, store: ObjectStore, ray_train: bool = False) -> None:
    """``run`` in a scratch directory; failures that another attempt cannot fix go to error.json."""
    job.attempt(spec, store, lambda workdir: run(spec, store, workdir, ray_train))


def run(spec: JobSpec, store: ObjectStore, workdir: Path, ray_train: bool = False) -> None:
    """Every stage of the recipe, in order (module docstring); ``ray_train`` in a Ray Train worker: SFT checkpoints
    reported to Ray Train, and a retried attempt resumed from them (``tool_resume``)."""
    import torch
    from transformers import AutoTokenizer

    sft, grpo, use_gpu = spec.sft, spec.grpo, spec.use_gpu
    bf16, dtype = trl_configs.precision(use_gpu)

    # --- 1, 2. data, the tool format, tokens with the loss on assistant turns ---
    start = start_model.fetch(spec, store, workdir)  # a registered model's artifacts, when it trains one further
    tokenizer = AutoTokenizer.from_pretrained(start_model.tokenizer_source(spec, start))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    fmt = tool_format.detect(tokenizer)
    log.info("run %s: tool format %s", spec.run_id, fmt.note)
    train_rows = load_rows(store, spec.train_key, "train")
    eval_rows = load_rows(store, spec.eval_key, "eval")
    train_set, train_left_out = sft_rows(train_rows, fmt, tokenizer, sft.max_seq_length, "train")
    eval_set, eval_left_out = sft_rows(eval_rows, fmt, tokenizer, sft.max_seq_length, "eval")
    examples = eval_examples(eval_rows, fmt, tokenizer)
    max_new_tokens = eval_max_new_tokens(eval_rows, fmt, tokenizer)
    metrics: dict[str, float] = {
        "train_rows": len(train_set), "eval_rows": len(eval_set), "train_rows_left_out": train_left_out,
        "eval_rows_left_out": eval_left_out, "eval_prompts": len(examples["prompts"]),
        "eval_call_prompts": sum(1 for e in examples["expected"] if e),
    }  # fmt: skip

    progress = ProgressPush.from_env(spec.run_id, rank=0)
    measure = partial(evaluate, tokenizer=tokenizer, examples=examples, max_new_tokens=max_new_tokens, stage="eval")
    try:
        kept = tool_resume.kept(store, spec) if grpo is not None else None
        if kept is not None:  # an attempt retried during GRPO: SFT is done
            metrics.update(kept["metrics"])
            sft_steps, history, stop, best_step = kept["steps"], kept["evals"], kept["stop"], kept["best_step"]
            stage_log(progress, f"SFT finished in an earlier attempt (step {sft_steps}): GRPO starts from its model")
            model = tool_resume.kept_model(store, spec, workdir / "sft", dtype)
            if use_gpu and torch.cuda.is_available():
                model = model.to("cuda")
        else:
            # --- 3. the base student (once per run: a retried attempt reads what it measured) ---
            model, peft_config = start_model.load(spec, start, dtype)
            if use_gpu and torch.cuda.is_available():
                model = model.to("cuda")
            before = job.read_json(store, f"{spec.output_prefix}/{tool_resume.BEFORE}")
            if before is None:
                stage_log(progress, f"evaluating the base student on {len(examples['prompts'])} prompts "
                                    f"({fmt.name} format)")  # fmt: skip
                before = evaluate(model, tokenizer, examples, max_new_tokens, "base", progress, 0)

            # --- 4. SFT (checkpoints in a Ray Train job; a retried attempt resumes from the last) ---
            sft_steps = evals.planned_steps(sft, len(train_set))
            total = sft_steps + (grpo.max_steps if grpo else 0)
            every = evals.cadence(sft, sft_steps)
            stage_log(progress, f"SFT: {sft_steps} steps on {len(train_set)} conversations, evals every {every or '-'}")
            trainer = sft_trainer(model, peft_config, tokenizer, train_set, eval_set, sft, workdir, use_gpu, bf16,
                                  every, checkpoints=ray_train)  # fmt: skip
            watch = Watch(failures.SFT)
            best = evals.BestByMetric(measure, "eval_correct_rate", every, evals.patience(sft, every), progress)
            for callback in (watch, StageProgress(progress, 0, total), best, *tool_resume.reporting(ray_train)):
                trainer.add_callback(callback)
            if "eval_loss_before" not in before:
                before["eval_loss_before"] = float(trainer.evaluate()["eval_loss"])
                job.write_json(store, f"{spec.output_prefix}/{tool_resume.BEFORE}", before)
            metrics.update(before)
            output = tool_resume.train(trainer, progress, ray_train)
            if progress.stopped_by_service:
                log.info("run %s: the trainer says the run is final; stopping without a result", spec.run_id)
                return
            watch.check()
            metrics["eval_loss_after"] = eval_loss(trainer, failures.SFT)
            metrics.update(
                train_loss=float(output.training_loss), steps=trainer.state.global_step,
                train_runtime_s=float(output.metrics.get("train_runtime", 0.0)),
            )  # fmt: skip
            model, sft_steps = trainer.model, trainer.state.global_step
            history, stop = best.evals, evals.ending(sft_steps, trainer.state.max_steps, sft, best.stopped_early)
            del trainer  # its optimizer state
            gc.collect()
            stage_log(progress, "evaluating the SFT model")
            # (a mid-training eval at the last step, or at the best step put back, already measured these weights)
            metrics.update(evaluate(model, tokenizer, examples, max_new_tokens, "sft", progress, sft_steps,
                                    best.values_at(sft_steps)))  # fmt: skip
            best_step = sft_steps
            if best.restore(
                model, {"eval_correct_rate": metrics["sft_correct_rate"], "eval_loss": metrics["eval_loss_after"]}
            ):
                stage_log(progress, f"keeping the best SFT checkpoint, step {best.best_step}; evaluating it")
                metrics.update(evaluate(model, tokenizer, examples, max_new_tokens, "sft", progress, sft_steps,
                                        best.values_at(best.best_step)))  # fmt: skip
                best_step = best.best_step
            if grpo is not None:  # for an attempt retried during GRPO
                done = {"metrics": metrics, "steps": sft_steps, "evals": history, "stop": stop, "best_step": best_step}
                tool_resume.keep(store, spec, model, workdir / "sft", done)

        # --- 5. GRPO ---
        if grpo is not None:
            job.enter_phase(store, spec, failures.GRPO)
            model = grpo_start(model, workdir / "sft")
            dataset = grpo_rows(train_rows, fmt, tokenizer)
            stage_log(progress, f"GRPO reward dry run: {DRY_RUN_PROMPTS} prompts x {grpo.num_generations} completions")
            metrics.update(reward_dry_run(model, tokenizer, dataset, grpo, seed=sft.seed))
            total, every = sft_steps + grpo.max_steps, evals.cadence(sft, grpo.max_steps)
            stage_log(progress, f"GRPO: {grpo.max_steps} steps, {grpo.completions_per_step} completions a step, "
                                f"evals every {every or '-'}")  # fmt: skip
            best = evals.BestByMetric(
                measure, "eval_correct_rate", every, evals.patience(sft, every), progress, sft_steps, on_steps=True
            )
            model, grpo_metrics = grpo_train(model, tokenizer, dataset, grpo, sft.seed, workdir, use_gpu, bf16,
                                             [StageProgress(progress, sft_steps, total), best])  # fmt: skip
            if progress.stopped_by_service:
                log.info("run %s: the trainer says the run is final; stopping without a result", spec.run_id)
                return
            metrics.update(grpo_metrics)
            done = sft_steps + int(grpo_metrics["grpo_steps"])
            history += best.evals
            stop = {"reason": "early_stop" if best.stopped_early and done < total else "max_steps", "step": done}
            stage_log(progress, "evaluating the GRPO model")
            metrics.update(evaluate(model, tokenizer, examples, max_new_tokens, "grpo", progress, done,
                                    best.values_at(done)))  # fmt: skip
            best_step = done
            if best.restore(model, {"eval_correct_rate": metrics["grpo_correct_rate"]}):
                stage_log(progress, f"keeping the best GRPO checkpoint, step {best.best_step}; evaluating it")
                metrics.update(evaluate(model, tokenizer, examples, max_new_tokens, "grpo", progress, done,
                                        best.values_at(best.best_step)))  # fmt: skip
                best_step = best.best_step
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
        "student_model": spec.student_model, "continued_from": spec.start_from, "artifact_kind": sft.artifact_kind,
        "use_gpu": use_gpu,
        "tool_format": fmt.name, "tool_format_note": fmt.note, "output_format": "<tool_call> blocks (Hermes style)",
        "tool_format_detail": fmt.to_dict(),
        "train_rows": len(train_set), "eval_rows": len(eval_set), "system_prompt": shared_system_prompt(train_rows),
        "decoding": {"max_new_tokens": max_new_tokens, "temperature": 0.0},
        "grpo_generation_engine": (VLLM if metrics.get("grpo_generation_vllm") else TRANSFORMERS) if grpo else None,
    }  # fmt: skip
    (model_dir / "training_config.json").write_text(json.dumps(training_config, indent=2))
    job.upload_dir(store, model_dir, f"{spec.output_prefix}/model")
    result = {
        "metrics": metrics, "artifact_kind": sft.artifact_kind,
        "artifact_uri": f"s3://{store.bucket}/{spec.output_prefix}/model/", "training_config": training_config,
        "tools_json": [tool_format.tool_json(tool) for tool in trained_tools(train_rows)],
        "evals": history, "best_step": best_step, "stop": stop,
    }  # fmt: skip
    job.write_json(store, f"{spec.output_prefix}/result.json", result)
    log.info("run %s: %s", spec.run_id, json.dumps(metrics))


def sft_trainer(
    model: Any, peft_config: Any, tokenizer: Any, train_set: list[dict[str, Any]], eval_set: list[dict[str, Any]],
    settings: SftSettings, workdir: Path, use_gpu: bool, bf16: bool, every: int = 0, checkpoints: bool = False,
) -> Any:  # fmt: skip
    """trl's SFTTrainer on pre-tokenized rows: ``assistant_masks`` make the labels (-100 elsewhere); a checkpoint
    every ``settings.checkpoint_every_steps`` steps (and at the last) with ``checkpoints``."""
    from datasets import Dataset
    from trl import SFTTrainer

    # Evals of the eval loss every ``every`` steps; ``run`` adds the scoring of generated calls to each
    # (``evals.BestByMetric``), which decides on early stopping.
    config = trl_configs.sft_config(
        settings, workdir / "sft-out", use_gpu=use_gpu, bf16=bf16, save_checkpoints=checkpoints, every=every
    )
    return SFTTrainer(
        model=model, args=config, processing_class=tokenizer, peft_config=peft_config,
        train_dataset=Dataset.from_list(train_set),
        eval_dataset=Dataset.from_list(eval_set),
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
