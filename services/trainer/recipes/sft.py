"""The SFT recipe: what the Ray job of a "finetune-text" (or distill-text) run runs.

    python -m services.trainer.recipes.sft --spec-key tenants/<t>/runs/<run>/spec.json

The spec (``job_spec.JobSpec`` in the bucket of DISTILLERY_S3_BUCKET) names the student model,
the train and eval splits (canonical ``{"messages": [...]}`` JSONL), the output prefix, the
resolved ``SftSettings`` and the workers. The driver (``job.drive``) checks the student model,
then runs a Ray Train ``TorchTrainer`` whose loop, on every worker (``train``, top to bottom):

1. reads both splits as conversational prompt-completion rows (the loss is on the final
   assistant turn only: trl's ``completion_only_loss``), leaving out rows longer than
   ``max_seq_length``;
2. builds trl's ``SFTTrainer`` (LoRA unless ``full_finetune``) with checkpoints to S3 through
   Ray Train; the run id is the Ray run name, so a job submitted again for the same run
   resumes from its last checkpoint;
3. evaluates before training (once per run: kept in ``eval_before.json``): the eval loss, and on
   rank 0 the base student's answers to the first eval prompts (``answers.py``); trains with evals of
   the eval loss at a cadence and early stopping, both on by default (``evals.py``: the best checkpoint is
   loaded at the end; for a run with a rubric, by the rubric's score of generated answers instead:
   ``rubric_evals.py``), evaluates the loss after;
4. on rank 0, saves the model (the adapter or the full weights, the tokenizer and
   ``training_config.json`` with the evaluation's decoding), asks the saved model as ``Generate``
   serves it the same prompts (``eval_answers.json``), uploads it all to ``<output_prefix>/model/``
   and writes ``result.json`` (with the evals, the best step and how training ended): what it reports
   about answers is what ``Generate`` answers.

Failures end in ``<output_prefix>/error.json`` (``{"code", "message", "field"}``, see
``failures.py``) and a non-zero exit. The loop writes it itself for what retrying cannot fix
(the dataset, a diverged loss: ``job.attempt``) and returns, so Ray Train does not try again;
anything it raises is retried from the last checkpoint (``max_failures=2``) and then
classified by the driver. A cancel (SIGINT, ``RAY_JOB_STOP_SIGNAL=SIGINT``) ends the job
with no error.json. The shared skeleton: ``job.py`` (driver, Ray, storage), ``splits.py``,
``trl_configs.py``, ``evals.py``, ``watch.py`` (the loss guard), ``progress.py``, ``failures.py``.

Environment: DISTILLERY_S3_* (``S3Settings.from_env``); DISTILLERY_TRAINER_ADDRESS and
DISTILLERY_RUN_TOKEN for live progress (``progress.py``); RAY_ADDRESS under the Jobs API
(without it a local Ray cluster is started).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

from services.common.objects import ObjectStore
from services.common.settings import S3Settings
from services.trainer.recipes import answers, evals, failures, job, rubric_evals, sft_packing, start_model, trl_configs
from services.trainer.recipes.job_spec import JobSpec
from services.trainer.recipes.sft_settings import SftSettings
from services.trainer.recipes.splits import prompt_completion, split_lines
from services.trainer.recipes.watch import Watch, eval_loss

log = logging.getLogger("distillery.recipes.sft")


def main(argv: list[str] | None = None) -> int:
    return job.drive(argv, "python -m services.trainer.recipes.sft", fit)


def fit(spec: JobSpec, s3: S3Settings) -> None:
    job.train_on_ray(train_loop, spec, s3, workers=spec.num_workers, max_failures=2, checkpoints_kept=2)


def train_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker. Failures that another attempt cannot fix go to error.json (rank 0)."""
    import ray.train

    spec = job.worker_spec(config)
    rank = ray.train.get_context().get_world_rank()
    store = ObjectStore(S3Settings.from_env())
    job.attempt(spec, store, lambda workdir: train(spec, store, rank, workdir), rank)


def train(spec: JobSpec, store: ObjectStore, rank: int, workdir: Path) -> None:
    import ray.train
    from ray.train.huggingface.transformers import RayTrainReportCallback, prepare_trainer
    from transformers import AutoTokenizer

    from services.trainer.recipes.progress import ProgressPush, stage_log

    settings, prefix = spec.sft, spec.output_prefix

    # --- setup: tokenizer, data, model, trainer ---
    start = start_model.fetch(spec, store, workdir)  # a registered model's artifacts, when it trains one further
    tokenizer = AutoTokenizer.from_pretrained(start_model.tokenizer_source(spec, start))
    train_rows, train_too_long = load_split(store, spec.train_key, "train", tokenizer, settings.max_seq_length)
    eval_rows, eval_too_long = load_split(store, spec.eval_key, "eval", tokenizer, settings.max_seq_length)
    max_new_tokens = answers.budget(eval_rows, tokenizer)  # the evaluation's, and Generate's default
    bf16, dtype = trl_configs.precision(spec.use_gpu)
    model, peft_config = start_model.load(spec, start, dtype)
    every = evals.cadence(settings, evals.planned_steps(settings, len(train_rows), spec.num_workers))
    patience = evals.patience(settings, every)
    rubric = rubric_evals.for_job(spec.rubric) if every else None  # a rubric: evals by its score, not the loss
    watch = Watch(failures.SFT)
    progress = ProgressPush.from_env(spec.run_id, rank=rank)
    scoring = [rubric_evals.RubricScore(rubric, tokenizer, eval_rows, max_new_tokens, progress)] if rubric else []
    callbacks: list[Any] = [RayTrainReportCallback(), watch, progress, *scoring, *trl_configs.early_stopping(patience)]
    trainer, counter, speed = recipe_trainer(
        settings, model, peft_config, tokenizer, train_rows, eval_rows, workdir / "out", use_gpu=spec.use_gpu,
        bf16=bf16, every=every, patience=patience, callbacks=callbacks, rubric=rubric is not None,
    )  # fmt: skip
    prepare_trainer(trainer)  # swaps the class in place

    # --- train: eval loss and the base's answers before (once per run), train or resume, eval loss after ---
    try:
        before = job.read_json(store, f"{prefix}/eval_before.json")
        if before is None:
            before = {"eval_loss": trainer.evaluate()["eval_loss"]}
            if rank == 0:
                before["answer_metrics"], before["answers"] = answers.evaluate(
                    trainer.model, tokenizer, eval_rows, max_new_tokens, "base"
                )
                job.write_json(store, f"{prefix}/eval_before.json", before)
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as directory:
                resume = os.path.join(directory, RayTrainReportCallback.CHECKPOINT_NAME)
                state = json.loads((Path(resume) / "trainer_state.json").read_text())
                stage_log(progress, f"resuming from the checkpoint at step {state['global_step']}")
                output = trainer.train(resume_from_checkpoint=resume)
        else:
            output = trainer.train()
        if progress.stopped_by_service:
            log.info("run %s: the trainer says the run is final; stopping without a result", spec.run_id)
            return
        history, best_step = evals.history(trainer)  # the evals while training (not the one after)
        watch.check()
        after = eval_loss(trainer, failures.SFT)  # of the best checkpoint, with early stopping
    finally:
        progress.close()
    stop = evals.ending(trainer.state.global_step, trainer.state.max_steps, settings, stopped_early=patience > 0)
    log.info("run %s: %d evals, stopped by %s at step %d, best step %d", spec.run_id, len(history), stop["reason"],
             stop["step"], best_step)  # fmt: skip

    # --- save: the model, its answers as Generate serves it, then result.json (last: it says the run is done) ---
    model_dir = workdir / "model"
    sft_packing.restore(trainer.model)  # the saved config names the model's own attention
    trainer.save_model(str(model_dir))
    if rank != 0:
        return
    tokenizer.save_pretrained(model_dir)
    (model_dir / "training_args.bin").unlink(missing_ok=True)  # a pickle of this worker's arguments
    training_config = {
        "sft": dataclasses.asdict(settings), "student_model": spec.student_model, "continued_from": spec.start_from,
        "artifact_kind": settings.artifact_kind, "num_workers": spec.num_workers, "use_gpu": spec.use_gpu,
        "train_rows": len(train_rows), "eval_rows": len(eval_rows),
        "train_rows_too_long": train_too_long, "eval_rows_too_long": eval_too_long,
        "decoding": {"max_new_tokens": max_new_tokens, "temperature": 0.0},
        "speed": {**speed, "non_padding_fraction": counter.non_padding_fraction},
    }  # fmt: skip
    (model_dir / "training_config.json").write_text(json.dumps(training_config, indent=2))
    answer_metrics = answers.evaluate_served(
        model_dir, spec.student_model, not settings.full_finetune, eval_rows, max_new_tokens, before
    )  # writes eval_answers.json
    job.upload_dir(store, model_dir, f"{prefix}/model")
    runtime = float(output.metrics.get("train_runtime", 0.0))
    tokens = int(trainer.state.num_input_tokens_seen)
    metrics = {
        "eval_loss_before": float(before["eval_loss"]), "eval_loss_after": float(after),
        "train_loss": float(output.training_loss), "train_runtime_s": runtime, "steps": trainer.state.global_step,
        "evals": len(history), "eval_every_steps": every, "early_stopping_patience": patience,
        "train_rows": len(train_rows), "eval_rows": len(eval_rows), "train_tokens": tokens,
        "tokens_per_second": counter.real / runtime if runtime > 0 else 0.0, **answer_metrics,
        "packing": speed["packing"], "non_padding_fraction": counter.non_padding_fraction, "bf16": speed["bf16"],
        "liger": speed["liger"], "gradient_checkpointing": speed["gradient_checkpointing"],
    }  # fmt: skip
    result = {
        "metrics": metrics, "artifact_kind": settings.artifact_kind,
        "artifact_uri": f"s3://{store.bucket}/{prefix}/model/", "training_config": training_config,
        "evals": history, "best_step": best_step, "stop": stop,
    }  # fmt: skip
    job.write_json(store, f"{prefix}/result.json", result)
    log.info("run %s: %s", spec.run_id, json.dumps(metrics))


def recipe_trainer(
    settings: SftSettings,
    model: Any,
    peft_config: Any,
    tokenizer: Any,
    train_rows: list[dict[str, Any]],
    eval_rows: list[dict[str, Any]],
    output_dir: Path,
    *,
    use_gpu: bool,
    bf16: bool,
    every: int = 0,
    patience: int = 0,
    callbacks: list[Any] | None = None,
    rubric: bool = False,
    save_checkpoints: bool = True,
) -> tuple[Any, sft_packing.TokenCount, dict[str, Any]]:
    """trl's ``SFTTrainer`` as the recipe trains (``sft_packing``: padding-free packing where it is exact on the
    model, the attention, bf16, Liger, gradient checkpointing), the count of its training batches' tokens, and
    the speed choices made (the run records them)."""
    from datasets import Dataset
    from trl import SFTTrainer

    speed = sft_packing.choose(model, settings, use_gpu, bf16)
    config = trl_configs.sft_config(
        settings, output_dir, use_gpu=use_gpu, bf16=bf16, save_checkpoints=save_checkpoints, every=every,
        patience=patience, count_tokens=True, **sft_packing.config_kwargs(speed),
    )  # fmt: skip
    if rubric:
        rubric_evals.use(config)
    trainer = SFTTrainer(
        model=model, args=config, processing_class=tokenizer, peft_config=peft_config, callbacks=callbacks or [],
        train_dataset=Dataset.from_list(train_rows), eval_dataset=Dataset.from_list(eval_rows),
    )  # fmt: skip
    return trainer, sft_packing.count_tokens(trainer), speed


# --- data: a split's rows as trl conversational prompt-completion rows ---


def load_split(
    store: ObjectStore, key: str, name: str, tokenizer: Any, max_seq_length: int
) -> tuple[list[dict[str, Any]], int]:
    """A split's rows as trl conversational prompt-completion rows, and how many were left out as too long."""
    rows, too_long, shortest = [], 0, math.inf
    for where, line in split_lines(store, key, name):
        row = prompt_completion(line, where)
        length = len(tokenizer.apply_chat_template(row["prompt"] + row["completion"], tokenize=True)["input_ids"])
        shortest = min(shortest, length)
        if length > max_seq_length:
            too_long += 1
            continue
        rows.append(row)
    if not rows:
        raise failures.invalid_dataset(
            f"the {name} split has no rows" if not too_long else f"no row of the {name} split fits in "
            f"sft.max_seq_length={max_seq_length} tokens (the shortest has {shortest}): raise sft.max_seq_length "
            "or shorten the rows"
        )  # fmt: skip
    return rows, too_long


if __name__ == "__main__":
    sys.exit(main())
