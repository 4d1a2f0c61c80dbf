"""The speech recipe: what the Ray job of a "finetune-asr" run runs (Whisper fine-tuning).

    python -m services.trainer.recipes.speech --spec-key tenants/<t>/runs/<run>/spec.json

The spec (``job_spec.JobSpec``) names the Whisper student (hub id or directory), the train and eval splits
(ingest's canonical asr JSONL: one clip a row, its S3 key in ``audio_key``), the output prefix, the resolved
``SftSettings`` and the run's language override (``spec.language``, "" for none). The driver (``job.drive``)
runs a Ray Train ``TorchTrainer`` whose loop, on every worker (``train``, top to bottom):

1. reads both splits' clips from S3, decodes them (soundfile), resamples them to 16 kHz mono (soxr) and computes
   log-mel features with the model's own feature extractor (its config's ``num_mel_bins``); clips over 30 s are
   left out and reported by name (``speech_data.py``);
2. sets every row's language: the run's override, else the row's own (in Whisper's spelling, ``jv`` -> ``jw``),
   else Whisper's own detection from the audio (the top language and its probability kept per row, counts per
   language logged); labels are Whisper's prefix (language, transcribe, no timestamps) + the transcript, rows
   over 448 tokens left out and counted. Decoding uses the same language and task through ``generate`` (never
   ``forced_decoder_ids``), so training and evaluation decode alike;
3. evaluates the base on the eval split (once per run: ``eval_before.json``): WER with jiwer, raw and normalised,
   per language, CER for languages written without spaces (``speech_eval.py``);
4. trains with transformers' ``Seq2SeqTrainer`` (LoRA on the attention projections unless ``full_finetune``),
   a checkpoint every ``sft.checkpoint_every_steps`` to S3 through Ray Train (a job submitted again for the run
   resumes from the last one), mid-training evals of the WER at the cadence of ``evals.py`` with early stopping
   (``evals.BestByMetric``, lower is better; the best weights are put back at the end);
5. evaluates again, and on rank 0 saves the model (adapter or full weights), the processor (tokenizer and feature
   extractor: ``AutoProcessor`` loads it), the generation config, ``training_config.json`` (language, task,
   decoding) and ``eval_transcripts.json`` (each eval clip's transcript: decoded with ``Transcribe``'s budget,
   ``services/common/whisper.py``, so ``Transcribe`` answers the same), uploads them to
   ``<output_prefix>/model/`` (``load_trained`` loads them back to transcribe; so does the registry's
   ``Transcribe``) and writes ``result.json`` last.

Failures end in ``<output_prefix>/error.json`` as in every recipe (``job.py``, ``failures.py``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from collections import Counter
from pathlib import Path
from typing import Any, cast

from services.common import whisper
from services.common.objects import ObjectStore
from services.common.settings import S3Settings
from services.trainer.recipes import evals, failures, job, speech_data, speech_eval, trl_configs
from services.trainer.recipes.failures import RunFailure
from services.trainer.recipes.job_spec import JobSpec
from services.trainer.recipes.watch import Watch

log = logging.getLogger("distillery.recipes.speech")
SAMPLES = 8  # eval clips whose transcripts before and after training the model's training_config shows

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")  # Whisper's attention projections


def main(argv: list[str] | None = None) -> int:
    return job.drive(argv, "python -m services.trainer.recipes.speech", fit, chat_model=False)


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
    from transformers import AutoTokenizer, Seq2SeqTrainer, WhisperForConditionalGeneration, WhisperProcessor

    from services.trainer.recipes.progress import ProgressPush, stage_log

    settings, prefix = spec.sft, spec.output_prefix
    if spec.start_from:
        raise RunFailure(
            failures.UNKNOWN_MODEL, "training a registered speech model further is not supported yet: train its "
            "base Whisper model instead", "student_model",
        )  # fmt: skip

    # --- setup: model, data, languages, labels ---
    bf16, dtype = trl_configs.precision(spec.use_gpu)
    try:
        tokenizer = AutoTokenizer.from_pretrained(spec.student_model)
        model: Any = WhisperForConditionalGeneration.from_pretrained(spec.student_model, dtype=dtype)
    except (OSError, ValueError) as err:
        raise failures.unknown_model(spec.student_model, err) from err
    model.generation_config.forced_decoder_ids = None  # language and task go to generate, per row
    model.config.forced_decoder_ids = None
    model.generation_config.task = speech_data.TASK
    extractor = speech_data.feature_extractor(spec.student_model, model.config)
    override = whisper.whisper_language(spec.language) if spec.language else ""
    train_rows, train_oversized = speech_data.read_split(store, spec.train_key, "train", extractor, override)
    eval_rows, eval_oversized = speech_data.read_split(store, spec.eval_key, "eval", extractor, override)
    detected = detect(model, train_rows + eval_rows)
    limit = min(speech_data.MAX_LABEL_TOKENS, int(model.config.max_target_positions))
    train_rows, train_too_long = speech_data.cap_labels(train_rows, tokenizer, limit)
    eval_rows, eval_too_long = speech_data.cap_labels(eval_rows, tokenizer, limit)
    languages = Counter(row["language"] for row in train_rows + eval_rows)
    log.info("run %s: clips per language %s (%d detected from the audio); left out: over 30 s %s, transcripts over "
             "%d tokens %d", spec.run_id, dict(languages), len(detected), train_oversized + eval_oversized or "none",
             limit, train_too_long + eval_too_long)  # fmt: skip
    for name, rows, oversized, too_long in (("train", train_rows, train_oversized, train_too_long),
                                            ("eval", eval_rows, eval_oversized, eval_too_long)):  # fmt: skip
        if not rows:
            raise failures.invalid_dataset(
                f"the {name} split has no clip to train on ({len(oversized)} over 30 s, {too_long} with transcripts "
                f"over {limit} tokens): split long clips and their transcripts"
            )  # fmt: skip
    max_new_tokens = whisper.max_new_tokens(model.config.max_target_positions)  # Transcribe's budget too
    spelling = getattr(tokenizer, "english_spelling_normalizer", None)

    def measure(m: Any) -> dict[str, Any]:
        transcripts = speech_eval.transcribe(m, tokenizer, eval_rows, max_new_tokens)
        return {**speech_eval.score(eval_rows, transcripts, spelling), "transcripts": transcripts}

    if not settings.full_finetune:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout,
                          target_modules=list(LORA_TARGETS))  # fmt: skip
        model = get_peft_model(model, lora)
    every = evals.cadence(settings, evals.planned_steps(settings, len(train_rows), spec.num_workers))
    patience = evals.patience(settings, every)
    progress = ProgressPush.from_env(spec.run_id, rank=rank)
    best = evals.BestByMetric(lambda m: {"eval_wer": measure(m)["wer"]}, "eval_wer", every, patience, progress,
                              lower_is_better=True)  # fmt: skip
    watch = Watch(failures.SFT)
    args = trl_configs.trainer_args(settings, workdir / "out", use_gpu=spec.use_gpu, bf16=bf16, every=every,
                                    ray_train=ray_train, seq2seq=True)  # fmt: skip
    trainer = Seq2SeqTrainer(
        model=model, args=args,
        data_collator=speech_data.Collator(int(model.generation_config.decoder_start_token_id)),
        train_dataset=cast(Any, train_rows), eval_dataset=cast(Any, eval_rows), callbacks=[watch, progress, best],
    )  # fmt: skip
    if ray_train:
        from ray.train.huggingface.transformers import RayTrainReportCallback, prepare_trainer

        trainer.add_callback(RayTrainReportCallback())
        prepare_trainer(trainer)

    # --- train: the base's WER (once per run), train or resume, the WER after ---
    try:
        before = job.read_json(store, f"{prefix}/eval_before.json")
        if before is None:
            before = measure(trainer.model)
            if rank == 0:
                job.write_json(store, f"{prefix}/eval_before.json", before)
        if resume:
            state = json.loads((Path(resume) / "trainer_state.json").read_text())
            stage_log(progress, f"resuming from the checkpoint at step {state['global_step']}")
        output = trainer.train(resume_from_checkpoint=resume)
        if progress.stopped_by_service:
            log.info("run %s: the trainer says the run is final; stopping without a result", spec.run_id)
            return None
        watch.check()
        after = measure(trainer.model)
        restored = best.restore(trainer.model, {"eval_wer": after["wer"]})  # the best eval's weights, if better
        if restored:
            after = measure(trainer.model)
    finally:
        progress.close()
    stop = evals.ending(trainer.state.global_step, trainer.state.max_steps, settings, best.stopped_early)
    best_step = best.best_step if restored else trainer.state.global_step  # the step of the weights kept
    log.info("run %s: WER %.3f -> %.3f, %d evals, stopped by %s at step %d", spec.run_id, before["wer"],
             after["wer"], len(best.evals), stop["reason"], stop["step"])  # fmt: skip
    if rank != 0:
        return None

    # --- save: the model and processor, then result.json (last: it says the run is done) ---
    model_dir = workdir / "model"
    cast(Any, trainer.model).save_pretrained(model_dir)
    # one processor (tokenizer + feature extractor): what AutoProcessor loads back, beside an adapter too
    WhisperProcessor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(model_dir)
    model.generation_config.save_pretrained(model_dir)
    was = before.get("transcripts") or [""] * len(eval_rows)  # (an eval_before.json of an older job has none)
    samples = [{"audio": row["audio"], "language": row["language"], "text": row["text"], "before": was[i],
                "after": after["transcripts"][i]} for i, row in enumerate(eval_rows[:SAMPLES])]  # fmt: skip
    training_config = {
        "sft": dataclasses.asdict(settings), "student_model": spec.student_model,
        "artifact_kind": settings.artifact_kind, "num_workers": spec.num_workers, "use_gpu": spec.use_gpu,
        "language": override, "task": speech_data.TASK,
        "languages": dict(languages), "detected_languages": detected, "lora_targets": list(LORA_TARGETS),
        "train_rows": len(train_rows), "eval_rows": len(eval_rows), "oversized_clips": train_oversized + eval_oversized,
        "train_rows_too_long": train_too_long, "eval_rows_too_long": eval_too_long,
        "eval_samples": samples,
        "decoding": {"max_new_tokens": max_new_tokens, "num_beams": 1, "temperature": 0.0, "task": speech_data.TASK,
                     "language": override or "per row"},
    }  # fmt: skip
    (model_dir / "training_config.json").write_text(json.dumps(training_config, indent=2))
    # what the model answered on each eval clip: Transcribe answers the same (the WER above is theirs)
    answered = [{"audio": row["audio"], "language": row["language"], "text": row["text"], "transcript": transcript}
                for row, transcript in zip(eval_rows, after["transcripts"], strict=True)]  # fmt: skip
    (model_dir / "eval_transcripts.json").write_text(json.dumps({"rows": answered}, indent=2, ensure_ascii=False))
    job.upload_dir(store, model_dir, f"{prefix}/model")
    metrics = {
        "wer_before": before["wer"], "wer_after": after["wer"], "wer_raw_before": before["wer_raw"],
        "wer_raw_after": after["wer_raw"], "cer_before": before["cer"], "cer_after": after["cer"],
        "cer_raw_before": before["cer_raw"], "cer_raw_after": after["cer_raw"],
        "per_language_before": before["per_language"], "per_language_after": after["per_language"],
        "train_loss": float(output.training_loss), "train_runtime_s": float(output.metrics.get("train_runtime", 0.0)),
        "steps": trainer.state.global_step, "evals": len(best.evals), "eval_every_steps": every,
        "early_stopping_patience": patience, "train_rows": len(train_rows), "eval_rows": len(eval_rows),
        "oversized_clips": len(train_oversized) + len(eval_oversized),
        "rows_too_long": train_too_long + eval_too_long,
    }  # fmt: skip
    result = {
        "metrics": metrics, "artifact_kind": settings.artifact_kind,
        "artifact_uri": f"s3://{store.bucket}/{prefix}/model/", "training_config": training_config,
        "evals": best.evals, "best_step": best_step, "stop": stop,
    }  # fmt: skip
    job.write_json(store, f"{prefix}/result.json", result)
    log.info("run %s: %s", spec.run_id, json.dumps({k: v for k, v in metrics.items() if "per_language" not in k}))
    return result


def detect(model: Any, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Whisper's language detection for the rows without a language (their ``language`` set in place): one
    ``{"audio", "language", "probability"}`` a row it detected."""
    missing = [row for row in rows if not row["language"]]
    if not missing:
        return []
    found = speech_eval.detect_languages(model, missing)
    for row, (language, _) in zip(missing, found, strict=True):
        row["language"] = language
    log.info("languages detected from the audio: %s", dict(Counter(language for language, _ in found)))
    return [{"audio": row["audio"], "language": language, "probability": round(probability, 4)}
            for row, (language, probability) in zip(missing, found, strict=True)]  # fmt: skip


def load_trained(model_dir: Path, base: str) -> tuple[Any, Any, Any]:
    """A trained speech model as saved under ``<output_prefix>/model/`` (an adapter is merged into ``base``): the
    model, its tokenizer and its feature extractor, ready for ``speech_eval.transcribe``."""
    from transformers import GenerationConfig, WhisperForConditionalGeneration, WhisperProcessor

    model: Any
    if (model_dir / "adapter_config.json").exists():
        from peft import PeftModel

        model = PeftModel.from_pretrained(WhisperForConditionalGeneration.from_pretrained(base), model_dir)
        model = model.merge_and_unload()
    else:
        model = WhisperForConditionalGeneration.from_pretrained(model_dir)
    model.generation_config = GenerationConfig.from_pretrained(model_dir)
    processor = WhisperProcessor.from_pretrained(model_dir)
    return model, processor.tokenizer, processor.feature_extractor


if __name__ == "__main__":
    sys.exit(main())
