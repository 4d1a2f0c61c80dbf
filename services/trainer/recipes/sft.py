"""The SFT recipe: what the Ray job of a "finetune-text" (or distill-text) run runs.

    python -m services.trainer.recipes.sft --spec-key tenants/<t>/runs/<run>/spec.json

The spec (JSON in the bucket of DISTILLERY_S3_BUCKET) names the student model, the train and
eval splits (canonical ``{"messages": [...]}`` JSONL), the output prefix, the resolved
``SftSettings`` and the workers. The driver checks the student model, then runs a Ray Train
``TorchTrainer`` whose loop, on every worker:

1. reads both splits as conversational prompt-completion rows (the loss is on the final
   assistant turn only: trl's ``completion_only_loss``), leaving out rows longer than
   ``max_seq_length``;
2. builds trl's ``SFTTrainer`` (LoRA unless ``full_finetune``) with checkpoints to S3 through
   Ray Train; the run id is the Ray run name, so a job submitted again for the same run
   resumes from its last checkpoint;
3. evaluates before training (once per run: kept in ``eval_before.json``): the eval loss, and on
   rank 0 the base student's answers to the first eval prompts (``answers.py``); trains, evaluates
   the loss after;
4. on rank 0, saves the model (the adapter or the full weights, the tokenizer and
   ``training_config.json`` with the evaluation's decoding), asks the saved model as ``Generate``
   serves it the same prompts (``eval_answers.json``), uploads it all to ``<output_prefix>/model/``
   and writes ``result.json``: what it reports about answers is what ``Generate`` answers.

Failures end in ``<output_prefix>/error.json`` (``{"code", "message", "field"}``, see
``failures.py``) and a non-zero exit. The loop writes it itself for what retrying cannot fix
(the dataset, a diverged loss) and returns, so Ray Train does not try again; anything it
raises is retried from the last checkpoint (``FailureConfig(max_failures=2)``) and then
classified by the driver. A cancel (SIGINT, ``RAY_JOB_STOP_SIGNAL=SIGINT``) ends the job
with no error.json.

Environment: DISTILLERY_S3_* (``S3Settings.from_env``); DISTILLERY_TRAINER_ADDRESS and
DISTILLERY_RUN_TOKEN for live progress (``progress.py``); RAY_ADDRESS under the Jobs API
(without it a local Ray cluster is started).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from minio.error import S3Error
from transformers import TrainerCallback

from services.common.errors import NotFound
from services.common.objects import ObjectStore
from services.common.settings import S3Settings
from services.trainer.recipes import answers, failures
from services.trainer.recipes.failures import RunFailure
from services.trainer.recipes.sft_settings import SftSettings

log = logging.getLogger("distillery.recipes.sft")

LOCAL_OBJECT_STORE_BYTES = 200 * 1024 * 1024


def main(argv: list[str] | None = None) -> int:
    return drive(argv, "python -m services.trainer.recipes.sft", lambda spec: SftSettings(**spec["sft"]), fit)


def drive(
    argv: list[str] | None,
    prog: str,
    check_settings: Callable[[dict[str, Any]], object],
    fit: Callable[[dict[str, Any], S3Settings], None],
) -> int:
    """A recipe's Ray job from start to exit code: read the spec, skip a run that has its result,
    check the settings and the student, ``fit``, and record what went wrong in error.json."""
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--spec-key", required=True, help="S3 key of the run's spec.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    s3 = S3Settings.from_env()
    store = ObjectStore(s3)
    spec = read_json(store, args.spec_key)
    if spec is None:
        log.error("no spec at s3://%s/%s", s3.bucket, args.spec_key)
        return 2
    prefix = spec["output_prefix"]
    if read_json(store, f"{prefix}/result.json") is not None:
        log.info("run %s already has its result; nothing to do", spec["run_id"])
        return 0
    store.delete_prefix(f"{prefix}/error.json")  # from an earlier attempt
    try:
        check_settings(spec)
        check_student_model(spec["student_model"])
        fit(spec, s3)
    except KeyboardInterrupt:
        log.info("cancelled")
        return 130
    except Exception as err:
        failure = failures.classify(err)
        log.exception("run %s failed: %s: %s", spec["run_id"], failure.code, failure.message)
        store.put_bytes(f"{prefix}/error.json", json.dumps(failure.to_dict()).encode(), "application/json")
        return 1
    if read_json(store, f"{prefix}/result.json") is not None:
        log.info("run %s done", spec["run_id"])
        return 0
    error = read_json(store, f"{prefix}/error.json")
    if error is not None:
        log.error("run %s failed: %s: %s", spec["run_id"], error.get("code"), error.get("message"))
    else:
        log.error("run %s stopped before the end (cancelled, or the trainer said it is final)", spec["run_id"])
    return 1


def start_ray() -> None:
    """Join the job's Ray cluster (RAY_ADDRESS under the Jobs API), else start a local one."""
    import ray

    if os.environ.get("RAY_ADDRESS"):
        ray.init()
    else:  # a local cluster, for tests and direct runs
        ray.init(address="local", object_store_memory=LOCAL_OBJECT_STORE_BYTES, include_dashboard=False)


def scaling(workers: int, use_gpu: bool) -> Any:
    """The workers a job asks Ray for. Ray gives a worker one CPU unless told otherwise, and sets its torch
    to one thread to match; a CPU job asks instead for the CPUs of the largest node, shared among its workers
    (so two CPU jobs on one node take turns rather than share it). A GPU worker asks for one GPU."""
    import ray
    from ray.train import ScalingConfig

    if use_gpu:
        return ScalingConfig(num_workers=workers, use_gpu=True)
    node_cpus = max((int(node["Resources"].get("CPU", 0)) for node in ray.nodes() if node["Alive"]), default=1)
    return ScalingConfig(num_workers=workers, resources_per_worker={"CPU": max(1, node_cpus // workers)})


def checkpoint_storage(s3: S3Settings) -> Any:
    """The S3 filesystem Ray Train keeps a run's checkpoints in."""
    import pyarrow.fs

    return pyarrow.fs.S3FileSystem(
        endpoint_override=s3.endpoint, scheme="https" if s3.secure else "http",
        access_key=s3.access_key, secret_key=s3.secret_key, region=s3.region,
    )  # fmt: skip


def check_student_model(student_model: str) -> None:
    """Fail before starting any worker when the student cannot be loaded or has no chat template."""
    from transformers import AutoConfig, AutoTokenizer

    try:
        AutoConfig.from_pretrained(student_model)
        tokenizer = AutoTokenizer.from_pretrained(student_model)
    except Exception as err:
        raise failures.unknown_model(student_model, err) from err
    if not tokenizer.chat_template:
        raise RunFailure(
            failures.UNKNOWN_MODEL,
            f"the student model {student_model!r} has no chat template: pick a chat (instruct) model",
            "student_model",
        )


def fit(spec: dict[str, Any], s3: S3Settings) -> None:
    from ray.train import CheckpointConfig, FailureConfig, RunConfig
    from ray.train.torch import TorchTrainer

    start_ray()
    storage = checkpoint_storage(s3)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=spec,
        scaling_config=scaling(int(spec.get("num_workers", 1)), bool(spec.get("use_gpu"))),
        run_config=RunConfig(
            name=spec["run_id"],
            storage_path=f"{s3.bucket}/{spec['output_prefix']}/ray",
            storage_filesystem=storage,
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            failure_config=FailureConfig(max_failures=2),
        ),
    )
    trainer.fit()


def train_loop(spec: dict[str, Any]) -> None:
    """One Ray Train worker. Failures that another attempt cannot fix go to error.json (rank 0)."""
    import ray.train

    rank = ray.train.get_context().get_world_rank()
    store = ObjectStore(S3Settings.from_env())
    workdir = Path(tempfile.mkdtemp(prefix=f"{spec['run_id']}-rank{rank}-"))
    try:
        train(spec, store, rank, workdir)
    except RunFailure as failure:
        log.error("run %s failed: %s: %s", spec["run_id"], failure.code, failure.message)
        if rank == 0:
            error = json.dumps(failure.to_dict()).encode()
            store.put_bytes(f"{spec['output_prefix']}/error.json", error, "application/json")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def train(spec: dict[str, Any], store: ObjectStore, rank: int, workdir: Path) -> None:
    import ray.train
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from ray.train.huggingface.transformers import RayTrainReportCallback, prepare_trainer
    from transformers import AutoModelForCausalLM, AutoTokenizer, EarlyStoppingCallback
    from trl import SFTConfig, SFTTrainer

    from services.trainer.recipes.progress import ProgressPush

    settings = SftSettings(**spec["sft"])
    prefix, use_gpu = spec["output_prefix"], bool(spec.get("use_gpu"))

    # --- setup: tokenizer, data, model, trainer ---
    tokenizer = AutoTokenizer.from_pretrained(spec["student_model"])
    train_rows, train_too_long = load_split(store, spec["train_key"], "train", tokenizer, settings.max_seq_length)
    eval_rows, eval_too_long = load_split(store, spec["eval_key"], "eval", tokenizer, settings.max_seq_length)
    max_new_tokens = answers.budget(eval_rows, tokenizer)  # the evaluation's, and Generate's default
    bf16 = use_gpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    model = AutoModelForCausalLM.from_pretrained(spec["student_model"], dtype=torch.bfloat16 if bf16 else torch.float32)
    evals = settings.eval_every_steps > 0
    config = SFTConfig(
        output_dir=str(workdir / "out"), use_cpu=not use_gpu, bf16=bf16, activation_checkpointing=use_gpu,
        seed=settings.seed, data_seed=settings.seed, learning_rate=settings.learning_rate,
        num_train_epochs=settings.epochs, max_steps=settings.max_steps or -1,
        per_device_train_batch_size=settings.batch_size, per_device_eval_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation_steps, max_length=settings.max_seq_length,
        save_strategy="steps", save_steps=settings.checkpoint_every_steps, save_total_limit=2,
        eval_strategy="steps" if evals else "no", eval_steps=settings.eval_every_steps or None,
        load_best_model_at_end=settings.early_stopping_patience > 0, metric_for_best_model="eval_loss",
        greater_is_better=False, logging_steps=1, logging_nan_inf_filter=False, report_to=[], disable_tqdm=True,
        include_num_input_tokens_seen="non_padding", dataloader_num_workers=0,
    )  # fmt: skip
    peft_config = None
    if not settings.full_finetune:
        peft_config = LoraConfig(
            r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout,
            target_modules="all-linear", task_type="CAUSAL_LM",
        )  # fmt: skip
    watch = Watch()
    progress = ProgressPush.from_env(spec["run_id"], rank=rank)
    callbacks: list[Any] = [RayTrainReportCallback(), watch, progress]
    if settings.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=settings.early_stopping_patience))
    trainer = SFTTrainer(
        model=model, args=config, processing_class=tokenizer, peft_config=peft_config, callbacks=callbacks,
        train_dataset=Dataset.from_list(train_rows), eval_dataset=Dataset.from_list(eval_rows),
    )  # fmt: skip
    prepare_trainer(trainer)  # swaps the class in place

    # --- train: eval loss and the base's answers before (once per run), train or resume, eval loss after ---
    try:
        before = read_json(store, f"{prefix}/eval_before.json")
        if before is None:
            before = {"eval_loss": trainer.evaluate()["eval_loss"]}
            if rank == 0:
                before["answer_metrics"], before["answers"] = answers.evaluate(
                    trainer.model, tokenizer, eval_rows, max_new_tokens, "base"
                )
                store.put_bytes(f"{prefix}/eval_before.json", json.dumps(before).encode(), "application/json")
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as directory:
                resume = os.path.join(directory, RayTrainReportCallback.CHECKPOINT_NAME)
                output = trainer.train(resume_from_checkpoint=resume)
        else:
            output = trainer.train()
        if progress.stopped_by_service:
            log.info("run %s: the trainer says the run is final; stopping without a result", spec["run_id"])
            return
        if watch.diverged is not None:
            raise failures.diverged(*watch.diverged)
        after = trainer.evaluate()["eval_loss"]
        if not math.isfinite(after):
            raise failures.diverged(trainer.state.global_step, after)
    finally:
        progress.close()

    # --- save: the model, its answers as Generate serves it, then result.json (last: it says the run is done) ---
    model_dir = workdir / "model"
    trainer.save_model(str(model_dir))
    if rank != 0:
        return
    tokenizer.save_pretrained(model_dir)
    (model_dir / "training_args.bin").unlink(missing_ok=True)  # a pickle of this worker's arguments
    training_config = {
        "sft": dataclasses.asdict(settings), "student_model": spec["student_model"],
        "artifact_kind": settings.artifact_kind, "num_workers": spec.get("num_workers", 1), "use_gpu": use_gpu,
        "train_rows": len(train_rows), "eval_rows": len(eval_rows),
        "train_rows_too_long": train_too_long, "eval_rows_too_long": eval_too_long,
        "decoding": {"max_new_tokens": max_new_tokens, "temperature": 0.0},
    }  # fmt: skip
    (model_dir / "training_config.json").write_text(json.dumps(training_config, indent=2))
    answer_metrics = answers.evaluate_served(
        model_dir, spec["student_model"], not settings.full_finetune, eval_rows, max_new_tokens, before
    )  # writes eval_answers.json
    upload_dir(store, model_dir, f"{prefix}/model")
    runtime = float(output.metrics.get("train_runtime", 0.0))
    tokens = int(trainer.state.num_input_tokens_seen)
    metrics = {
        "eval_loss_before": float(before["eval_loss"]), "eval_loss_after": float(after),
        "train_loss": float(output.training_loss), "train_runtime_s": runtime, "steps": trainer.state.global_step,
        "train_rows": len(train_rows), "eval_rows": len(eval_rows), "train_tokens": tokens,
        "tokens_per_second": (tokens - watch.tokens_at_begin) / runtime if runtime > 0 else 0.0, **answer_metrics,
    }  # fmt: skip
    result = {
        "metrics": metrics, "artifact_kind": settings.artifact_kind,
        "artifact_uri": f"s3://{store.bucket}/{prefix}/model/", "training_config": training_config,
    }  # fmt: skip
    store.put_bytes(f"{prefix}/result.json", json.dumps(result, indent=2).encode(), "application/json")
    log.info("run %s: %s", spec["run_id"], json.dumps(metrics))


def read_split(store: ObjectStore, key: str, name: str) -> str:
    """A split's JSONL text; a split that cannot be read or decoded is an invalid dataset, saying what to do."""
    try:
        text = store.get_bytes(key).decode("utf-8")
    except (S3Error, NotFound) as err:
        code = err.code if isinstance(err, S3Error) else "NoSuchKey"
        raise failures.invalid_dataset(
            f"cannot read the {name} split at {key} ({code}): split the dataset again"
        ) from None
    except UnicodeDecodeError:
        raise failures.invalid_dataset(
            f"the {name} split at {key} is not UTF-8 text: upload the dataset again"
        ) from None
    return text


def load_split(
    store: ObjectStore, key: str, name: str, tokenizer: Any, max_seq_length: int
) -> tuple[list[dict[str, Any]], int]:
    """A split's rows as trl conversational prompt-completion rows, and how many were left out as too long."""
    text = read_split(store, key, name)
    rows, too_long, shortest = [], 0, math.inf
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        row = prompt_completion(line, f"{name} split, line {number}")
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


def prompt_completion(line: str, where: str) -> dict[str, Any]:
    """``{"messages": [...]}`` -> ``{"prompt": [the turns before the last], "completion": [the assistant's last]}``."""
    try:
        messages = json.loads(line)["messages"]
    except (ValueError, KeyError, TypeError):
        raise failures.invalid_dataset(f"{where}: not a JSON object with a messages list") from None
    if not isinstance(messages, list) or len(messages) < 2:
        raise failures.invalid_dataset(f"{where}: messages needs at least a user and an assistant turn")
    turns = []
    for message in messages:
        if not (isinstance(message, dict) and isinstance(message.get("content"), str) and message.get("role")):
            raise failures.invalid_dataset(f"{where}: every message needs a role and a text content")
        turns.append({"role": str(message["role"]), "content": message["content"]})
    if turns[-1]["role"] != "assistant" or not any(t["role"] == "user" for t in turns):
        raise failures.invalid_dataset(f"{where}: the last message must be the assistant's, after a user message")
    return {"prompt": turns[:-1], "completion": turns[-1:]}


class Watch(TrainerCallback):
    """Stops training at a non-finite loss (the logged loss is the mean over ranks, so all agree)."""

    def __init__(self) -> None:
        self.diverged: tuple[int, float] | None = None
        self.tokens_at_begin = 0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.tokens_at_begin = int(state.num_input_tokens_seen or 0)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        loss = (logs or {}).get("loss")
        if isinstance(loss, int | float) and not math.isfinite(loss):
            self.diverged = (state.global_step, float(loss))
            control.should_training_stop = True


def read_json(store: ObjectStore, key: str) -> dict[str, Any] | None:
    try:
        data = store.get_bytes(key)
    except NotFound:
        return None
    except S3Error as err:
        if err.code in ("NoSuchKey", "NoSuchBucket"):
            return None
        raise
    value = json.loads(data)
    return value if isinstance(value, dict) else None


def upload_dir(store: ObjectStore, directory: Path, prefix: str) -> None:
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        store.client.fput_object(store.bucket, f"{prefix}/{path.relative_to(directory).as_posix()}", str(path))


if __name__ == "__main__":
    sys.exit(main())
