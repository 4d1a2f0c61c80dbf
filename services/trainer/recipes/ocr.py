"""The OCR recipe: what the Ray job of a "finetune-ocr" run runs (a vision-language model learns to read images).

    python -m services.trainer.recipes.ocr --spec-key tenants/<t>/runs/<run>/spec.json

The spec (``job_spec.JobSpec``) names the student (a hub id or directory of an image-text-to-text model that
transformers loads with ``AutoModelForImageTextToText``: DeepSeek-OCR 2 by default, Qwen2.5-VL and the like),
the train and eval splits (ingest's canonical OCR JSONL: an image's name in the dataset's ZIP, its text, an
optional prompt, the ZIP's S3 key in ``archive_key``), the output prefix, the resolved ``SftSettings``,
``train_vision`` and ``image_mode``. The driver (``job.drive``) runs a Ray Train ``TorchTrainer`` whose loop,
on every worker (``train``, top to bottom):

1. loads the student and its processor (the original DeepSeek-OCR, remote code pinned to an old transformers,
   is refused with a hint naming DeepSeek-OCR 2) and checks the run's resolution mode against the model's
   (``services/common/ocr_reading.py``: an unknown mode fails naming ``image_mode``);
2. reads both splits: each distinct image archive downloaded once, the named images read out of it
   (``ocr_data.py``); every row's prompt is its own or the model's default (``<image>\\nFree OCR.`` for
   DeepSeek's models); the labels are the answer's tokens only (the prompt and the image's tokens -100); rows
   whose answer is over ``sft.max_seq_length`` tokens are left out and counted;
3. evaluates the base on the eval split (once per run: ``eval_before.json``): CER and WER with jiwer, raw and
   normalised (NFKC, whitespace collapsed), and the exact-match rate (``ocr_eval.py``), each image read by
   ``ocr_reading.read`` (greedy, the run's token budget: its longest reference in tokens and half again);
4. trains with transformers' ``Trainer`` and ``ocr_data.Collator``: LoRA on the language model's projections
   with the vision tower frozen, or, with ``train_vision``, LoRA on the vision tower's linear layers too
   (``lora_targets``); a full fine-tune (``sft.full_finetune``) trains every weight but the vision tower's, or
   all of them with ``train_vision``; a checkpoint every ``sft.checkpoint_every_steps`` to S3 through Ray
   Train (a job submitted again for the run resumes from the last one); mid-training evals of the CER at the
   cadence of ``evals.py`` with early stopping (``evals.BestByMetric``, lower is better; the best weights are
   put back at the end);
5. evaluates again, and on rank 0 saves the model (adapter or full weights) with its processor
   (``AutoProcessor`` loads it, beside an adapter too), ``training_config.json`` (``decoding``: the default
   prompt, ``max_new_tokens``, ``image_mode``: what ``ReadImage`` reads with) and ``eval_readings.json`` (each
   eval image's name, prompt, reference and reading after training, an adapter read merged into its base as
   ``ReadImage`` merges it: ``ReadImage`` reads the same), uploads them to ``<output_prefix>/model/`` and writes
   ``result.json`` last.

Failures end in ``<output_prefix>/error.json`` as in every recipe (``job.py``, ``failures.py``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any, cast

from services.common import ocr_reading
from services.common.errors import InvalidArgument
from services.common.objects import ObjectStore
from services.common.settings import S3Settings
from services.trainer.recipes import evals, failures, job, ocr_data, ocr_eval, trl_configs
from services.trainer.recipes.failures import RunFailure
from services.trainer.recipes.job_spec import JobSpec
from services.trainer.recipes.watch import Watch

log = logging.getLogger("distillery.recipes.ocr")
SAMPLES = 8  # eval images whose readings before and after training the model's training_config shows
INVALID_SETTINGS = "invalid_settings"  # the run error code of a setting the model cannot take
# The language model's projections LoRA trains (attention and MLP; a BART-like decoder's names too).
LM_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "out_proj", "gate_proj", "up_proj", "down_proj", "fc1",
                  "fc2")  # fmt: skip
VISION_PARTS = ("vision_tower", "visual", "vision_model", "vision_encoder", "image_encoder")
# Model types of checkpoints with remote code that no transformers of ours runs: the original DeepSeek-OCR (and
# the remote-code upload of DeepSeek-OCR 2, which shares its type).
REMOTE_CODE_TYPES = ("deepseek_vl_v2", "deepseekocr", "deepseek_ocr")
DEEPSEEK_OCR2 = "deepseek-community/DeepSeek-OCR-2"


def main(argv: list[str] | None = None) -> int:
    return job.drive(argv, "python -m services.trainer.recipes.ocr", fit, chat_model=False)


def fit(spec: JobSpec, s3: S3Settings) -> None:
    job.train_on_ray(train_loop, spec, s3, workers=spec.num_workers, max_failures=2, checkpoints_kept=2)


def train_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker: ``train`` from the run's last checkpoint, if it has one."""
    job.resumable_worker(config, train)


def train(
    spec: JobSpec, store: ObjectStore, rank: int, workdir: Path, *, resume: str | None = None, ray_train: bool = False
) -> dict[str, Any] | None:
    """Steps 1-5 of the module docstring; the result (rank 0), or None. Without ``ray_train`` it runs in this
    process (no checkpoints to Ray)."""
    from transformers import Trainer

    from services.trainer.recipes.progress import ProgressPush, stage_log

    settings, prefix, mode = spec.sft, spec.output_prefix, spec.image_mode
    if spec.start_from:
        raise RunFailure(failures.UNKNOWN_MODEL, "training a registered OCR model further is not supported yet: "
                         "train its base model instead", "student_model")  # fmt: skip

    # --- setup: model, processor, mode, data, answers ---
    bf16, dtype = trl_configs.precision(spec.use_gpu)
    model, processor = load_student(spec.student_model, dtype)
    check_image_mode(processor, mode)
    prompt = ocr_reading.default_prompt(model.config)
    tokenizer = processor.tokenizer
    train_rows, train_too_long = ocr_data.with_answers(
        ocr_data.read_split(store, spec.train_key, "train", workdir), tokenizer, prompt, settings.max_seq_length
    )
    eval_rows, eval_too_long = ocr_data.with_answers(
        ocr_data.read_split(store, spec.eval_key, "eval", workdir), tokenizer, prompt, settings.max_seq_length
    )
    for name, rows, too_long in (("train", train_rows, train_too_long), ("eval", eval_rows, eval_too_long)):
        if not rows:
            raise failures.invalid_dataset(
                f"the {name} split has no image to train on ({too_long} with texts over sft.max_seq_length="
                f"{settings.max_seq_length} tokens): split long pages, or raise sft.max_seq_length"
            )  # fmt: skip
    longest = max(len(row["answer"]) - 1 for row in train_rows + eval_rows)
    max_new_tokens = ocr_reading.max_new_tokens(longest)  # ReadImage's budget too (training_config.json)
    log.info("run %s: %d train and %d eval images (left out, texts over %d tokens: %d); default prompt %r, image "
             "mode %r, reading up to %d tokens", spec.run_id, len(train_rows), len(eval_rows), settings.max_seq_length,
             train_too_long + eval_too_long, prompt, mode or "default", max_new_tokens)  # fmt: skip

    def measure(m: Any) -> dict[str, Any]:
        read = ocr_eval.readings(m, processor, eval_rows, max_new_tokens, mode)
        return {**ocr_eval.score([row["text"] for row in eval_rows], read), "readings": read}

    targets = lora_targets(model, spec.train_vision)
    if settings.full_finetune:
        for name, parameter in model.named_parameters():
            parameter.requires_grad = spec.train_vision or not is_vision(name)
    else:
        from peft import LoraConfig, get_peft_model

        if not targets:
            raise RunFailure(failures.UNKNOWN_MODEL, f"the student model {spec.student_model!r} has no language "
                             f"model projections ({', '.join(LM_PROJECTIONS)}) to put LoRA on: fine-tune it fully "
                             "(sft.full_finetune)", "student_model")  # fmt: skip
        lora = LoraConfig(r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout,
                          target_modules=targets)  # fmt: skip
        model = get_peft_model(model, lora)
    every = evals.cadence(settings, evals.planned_steps(settings, len(train_rows), spec.num_workers))
    patience = evals.patience(settings, every)
    progress = ProgressPush.from_env(spec.run_id, rank=rank)
    best = evals.BestByMetric(lambda m: {"eval_cer": measure(m)["cer"]}, "eval_cer", every, patience, progress,
                              lower_is_better=True)  # fmt: skip
    watch = Watch(failures.SFT)
    args = trl_configs.trainer_args(settings, workdir / "out", use_gpu=spec.use_gpu, bf16=bf16, every=every,
                                    ray_train=ray_train)  # fmt: skip
    trainer = Trainer(
        model=model, args=args,
        data_collator=ocr_data.Collator(processor, mode), train_dataset=cast(Any, train_rows),
        eval_dataset=cast(Any, eval_rows), callbacks=[watch, progress, best],
    )  # fmt: skip
    if ray_train:
        from ray.train.huggingface.transformers import RayTrainReportCallback, prepare_trainer

        trainer.add_callback(RayTrainReportCallback())
        prepare_trainer(trainer)

    # --- train: the base's CER (once per run), train or resume, the CER after ---
    try:
        before = job.read_json(store, f"{prefix}/eval_before.json")
        if before is None:
            before = measure(trainer.model)
            if rank == 0:
                job.write_json(store, f"{prefix}/eval_before.json", before)
        if resume:
            state = json.loads((Path(resume) / "trainer_state.json").read_text())
            if not settings.full_finetune:  # the Trainer's own loading leaves DeepSeek-OCR 2's adapter out
                ocr_reading.load_adapter_weights(trainer.model, resume)
            stage_log(progress, f"resuming from the checkpoint at step {state['global_step']}")
        output = trainer.train(resume_from_checkpoint=resume)
        if progress.stopped_by_service:
            log.info("run %s: the trainer says the run is final; stopping without a result", spec.run_id)
            return None
        watch.check()
        after = measure(trainer.model)
        restored = best.restore(trainer.model, {"eval_cer": after["cer"]})  # the best eval's weights, if better
        if not settings.full_finetune:  # read as ReadImage reads: the adapter merged into the base
            cast(Any, trainer.model).merge_adapter()
        if restored or not settings.full_finetune:
            after = measure(trainer.model)
    finally:
        progress.close()
    stop = evals.ending(trainer.state.global_step, trainer.state.max_steps, settings, best.stopped_early)
    best_step = best.best_step if restored else trainer.state.global_step  # the step of the weights kept
    log.info("run %s: CER %.3f -> %.3f, %d evals, stopped by %s at step %d", spec.run_id, before["cer"],
             after["cer"], len(best.evals), stop["reason"], stop["step"])  # fmt: skip
    if rank != 0:
        return None

    # --- save: the model and processor, then result.json (last: it says the run is done) ---
    model_dir = workdir / "model"
    cast(Any, trainer.model).save_pretrained(model_dir)
    processor.save_pretrained(model_dir)  # what AutoProcessor loads back, beside an adapter too
    cast(Any, trainer.model).generation_config.save_pretrained(model_dir)
    was = before["readings"]
    samples = [{"image": row["image"], "prompt": row["prompt"], "text": row["text"], "before": was[i],
                "after": after["readings"][i]} for i, row in enumerate(eval_rows[:SAMPLES])]  # fmt: skip
    training_config = {
        "sft": dataclasses.asdict(settings), "student_model": spec.student_model,
        "model_type": ocr_reading.model_type(model.config), "artifact_kind": settings.artifact_kind,
        "num_workers": spec.num_workers, "use_gpu": spec.use_gpu, "train_vision": spec.train_vision,
        "image_mode": mode, "lora_targets": [] if settings.full_finetune else targets,
        "train_rows": len(train_rows), "eval_rows": len(eval_rows), "train_rows_too_long": train_too_long,
        "eval_rows_too_long": eval_too_long, "eval_samples": samples,
        "decoding": {"prompt": prompt, "max_new_tokens": max_new_tokens, "image_mode": mode, "num_beams": 1,
                     "temperature": 0.0},
    }  # fmt: skip
    (model_dir / "training_config.json").write_text(json.dumps(training_config, indent=2, ensure_ascii=False))
    # what the model read in each eval image: ReadImage reads the same (the CER above is theirs)
    answered = [{"image": row["image"], "prompt": row["prompt"], "text": row["text"], "reading": reading}
                for row, reading in zip(eval_rows, after["readings"], strict=True)]  # fmt: skip
    (model_dir / "eval_readings.json").write_text(json.dumps({"rows": answered}, indent=2, ensure_ascii=False))
    job.upload_dir(store, model_dir, f"{prefix}/model")
    scores = ("cer", "wer", "exact_match", "cer_raw", "wer_raw", "exact_match_raw")  # ocr_eval.score's
    metrics: dict[str, Any] = {
        **{f"{key}_before": before[key] for key in scores}, **{f"{key}_after": after[key] for key in scores},
        "train_loss": float(output.training_loss), "train_runtime_s": float(output.metrics.get("train_runtime", 0.0)),
        "steps": trainer.state.global_step, "evals": len(best.evals), "eval_every_steps": every,
        "early_stopping_patience": patience, "train_rows": len(train_rows), "eval_rows": len(eval_rows),
        "rows_too_long": train_too_long + eval_too_long,
    }  # fmt: skip
    result = {
        "metrics": metrics, "artifact_kind": settings.artifact_kind,
        "artifact_uri": f"s3://{store.bucket}/{prefix}/model/", "training_config": training_config,
        "evals": best.evals, "best_step": best_step, "stop": stop,
    }  # fmt: skip
    job.write_json(store, f"{prefix}/result.json", result)
    log.info("run %s: %s", spec.run_id, json.dumps(metrics))
    return result


def load_student(student: str, dtype: Any) -> tuple[Any, Any]:
    """The student model and its processor; an ``unknown_model`` failure when they cannot be loaded, with a hint
    naming DeepSeek-OCR 2 for the original DeepSeek-OCR."""
    from transformers import AutoModelForImageTextToText, AutoProcessor, PretrainedConfig

    try:
        raw, _ = PretrainedConfig.get_config_dict(student)
    except (OSError, ValueError) as err:
        raise failures.unknown_model(student, err) from err
    if str(raw.get("model_type", "")).lower() in REMOTE_CODE_TYPES:
        raise RunFailure(
            failures.UNKNOWN_MODEL, f"the student model {student!r} is the original DeepSeek-OCR (model type "
            f"{raw.get('model_type')!r}: remote code pinned to an old transformers), which this platform cannot "
            f"train: use DeepSeek-OCR 2 as transformers ships it ({DEEPSEEK_OCR2})", "student_model",
        )  # fmt: skip
    try:
        model = AutoModelForImageTextToText.from_pretrained(student, dtype=dtype)
        processor = AutoProcessor.from_pretrained(student)
    except (OSError, ValueError, ImportError) as err:
        raise failures.unknown_model(student, err) from err
    if not hasattr(processor, "tokenizer") or not hasattr(processor, "image_processor"):
        raise RunFailure(failures.UNKNOWN_MODEL, f"the student model {student!r} has no image processor and "
                         "tokenizer: give an image-text-to-text model (DeepSeek-OCR 2, Qwen2.5-VL...)",
                         "student_model")  # fmt: skip
    return model, processor


def check_image_mode(processor: Any, mode: str) -> None:
    """The run's resolution mode is one the model has ("" always is); else an ``invalid_settings`` failure
    naming ``image_mode``."""
    try:
        ocr_reading.image_kwargs(processor, mode)
    except InvalidArgument as err:
        raise RunFailure(INVALID_SETTINGS, err.message, "image_mode") from None


def is_vision(name: str) -> bool:
    """True for a parameter or module of the vision tower (not the language model's)."""
    parts = name.split(".")
    return "language_model" not in parts and any(part in VISION_PARTS for part in parts)


def lora_targets(model: Any, train_vision: bool) -> list[str]:
    """The linear layers LoRA trains, by name: the language model's projections (``LM_PROJECTIONS``), and with
    ``train_vision`` every linear layer of the vision tower."""
    import torch

    names = []
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        if is_vision(name):
            if train_vision:
                names.append(name)
        elif "language_model" in name.split(".") and name.rsplit(".", 1)[-1] in LM_PROJECTIONS:
            names.append(name)
    return names


def load_trained(model_dir: Path, base: str) -> tuple[Any, Any]:
    """A trained OCR model as saved under ``<output_prefix>/model/`` (an adapter is merged into ``base``) and its
    processor, ready for ``ocr_reading.read``."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model: Any
    if (model_dir / "adapter_config.json").exists():
        model = ocr_reading.merged_with_adapter(AutoModelForImageTextToText.from_pretrained(base), model_dir)
    else:
        model = AutoModelForImageTextToText.from_pretrained(model_dir)
    return model.eval(), AutoProcessor.from_pretrained(model_dir)


if __name__ == "__main__":
    sys.exit(main())
