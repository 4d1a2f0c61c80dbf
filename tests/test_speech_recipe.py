"""The speech recipe (recipes/speech.py, speech_data.py, speech_eval.py): audio, features, labels, language codes,
normalisers and error rates; and a training job on a tiny Whisper (built from a config, tokenizer trained here)
over the real speech clips of examples/asr, against a real S3 server."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile

from services.common import whisper as whisper_codes
from services.common.objects import ObjectStore
from services.common.settings import S3Settings
from services.trainer.recipes import speech, speech_data, speech_eval
from services.trainer.recipes.job_spec import JobSpec
from services.trainer.recipes.sft_settings import resolve_sft
from tests.tiny_models import build_whisper

ROOT = Path(__file__).resolve().parents[1]
CLIPS = ROOT / "examples" / "asr"


def wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def whisper(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_whisper(tmp_path_factory.mktemp("whisper") / "tiny")


@pytest.fixture(scope="module")
def store(s3_settings: S3Settings) -> ObjectStore:
    store = ObjectStore(s3_settings)
    store.ensure_bucket()
    return store


# --- audio and features ---


def test_clips_are_decoded_to_16_khz_mono() -> None:
    seconds, rate = 1.5, 44_100
    t = np.arange(int(seconds * rate)) / rate
    left, right = np.sin(2 * np.pi * 440 * t), np.zeros_like(t)
    audio = speech_data.decode(wav_bytes(np.stack([left, right], axis=1) * 0.5, rate))
    assert audio.ndim == 1 and audio.dtype == np.float32
    assert abs(len(audio) - seconds * 16_000) <= 2
    assert 0.2 < float(np.abs(audio).max()) < 0.3  # the mean of a 0.5 tone and silence
    spectrum = np.abs(np.fft.rfft(audio))
    assert abs(np.argmax(spectrum) * 16_000 / len(audio) - 440) < 5  # the tone is where it was
    real = speech_data.decode((CLIPS / "bonjour.wav").read_bytes())
    assert 2.0 < len(real) / 16_000 < 3.5


def test_features_have_the_bins_the_model_config_says(tmp_path: Path) -> None:
    from transformers import WhisperConfig

    audio = speech_data.decode((CLIPS / "weather.wav").read_bytes())
    for bins in (80, 128):
        config = WhisperConfig(num_mel_bins=bins)
        extractor = speech_data.feature_extractor(str(tmp_path / "nothing-saved"), config)
        assert speech_data.features(extractor, audio).shape == (bins, 3000)
    # a saved extractor with the wrong bins for its model is rebuilt from the model's config
    from transformers import WhisperFeatureExtractor

    WhisperFeatureExtractor(feature_size=80).save_pretrained(tmp_path / "saved")
    extractor = speech_data.feature_extractor(str(tmp_path / "saved"), WhisperConfig(num_mel_bins=128))
    assert speech_data.features(extractor, audio).shape == (128, 3000)


# --- labels and languages ---


def test_labels_start_with_the_language_prefix_and_long_ones_are_left_out(whisper: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(whisper)
    ids = speech_data.labels(tokenizer, "turn off the lights", "fr")
    assert tokenizer.convert_ids_to_tokens(ids[:4]) == [
        "<|startoftranscript|>", "<|fr|>", "<|transcribe|>", "<|notimestamps|>"
    ]  # fmt: skip
    assert ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == "turn off the lights"
    rows = [{"text": "short one", "language": "en"}, {"text": "word " * 400, "language": "en"}]
    kept, too_long = speech_data.cap_labels(rows, tokenizer)
    assert too_long == 1 and [r["text"] for r in kept] == ["short one"] and kept[0]["labels"][1] != ids[1]
    kept, too_long = speech_data.cap_labels(rows, tokenizer, limit=5)
    assert kept == [] and too_long == 2


def test_language_codes_are_whispers_spelling() -> None:
    assert whisper_codes.whisper_language("jv") == "jw"
    assert whisper_codes.whisper_language("nb") == "no"
    assert whisper_codes.whisper_language("iw") == "he"
    assert whisper_codes.whisper_language("en-US") == "en"
    assert whisper_codes.whisper_language("FR") == "fr"
    assert whisper_codes.whisper_language("yue") == "yue" and whisper_codes.whisper_language("haw") == "haw"
    assert whisper_codes.whisper_language("cantonese") == "yue"
    assert len(whisper_codes.whisper_languages()) == 100
    for code in whisper_codes.whisper_languages():
        assert whisper_codes.whisper_language(code) == code
    with pytest.raises(ValueError, match="not a language Whisper transcribes"):
        whisper_codes.whisper_language("xx")


def test_row_language_override_own_or_detected() -> None:
    assert speech_data.row_language({"language": "jv"}, "", "row") == "jw"
    assert speech_data.row_language({"language": "en"}, "de", "row") == "de"
    assert speech_data.row_language({}, "", "row") == ""
    # ingest's guess from the transcript is not the audio's language: detected again
    assert speech_data.row_language({"language": "en", "language_source": "detected"}, "", "row") == ""


# --- normalisers and error rates ---


def test_normalisers_and_error_rates() -> None:
    english = speech_eval.normaliser("en")
    assert english("Turn OFF the lights, please!") == "turn off the lights please"
    assert english("It's two dollars") == english("it is $2")
    assert speech_eval.normaliser("fr")("Bonjour, je voudrais réserver!") == "bonjour je voudrais réserver"
    rows = [
        {"text": "Turn off the lights.", "language": "en"},
        {"text": "Bonjour, une table pour deux", "language": "fr"},
        {"text": "今天天气很好", "language": "zh"},
    ]
    perfect = speech_eval.score(rows, ["turn off the lights", "bonjour une table pour deux", "今天天气很好"])
    assert perfect["wer"] == 0.0 and perfect["wer_raw"] > 0.0  # the raw figure counts case and punctuation
    assert perfect["per_language"]["zh"]["measure"] == "cer" and perfect["per_language"]["en"]["measure"] == "wer"
    wrong = speech_eval.score(rows, ["turn on the lights", "bonjour une table pour deux", "今天天气不好"])
    assert wrong["per_language"]["en"]["wer"] == pytest.approx(0.25)
    assert wrong["per_language"]["fr"]["wer"] == 0.0
    assert wrong["per_language"]["zh"]["cer"] == pytest.approx(1 / 6)  # one character of six, not one word of one
    # weighted by each language's reference length (4 words, 5 words, 6 characters)
    assert wrong["wer"] == pytest.approx((0.25 * 4 + 0 + 1 / 6 * 6) / 15)
    assert speech_eval.score([{"text": "", "language": "en"}], ["hello"])["wer"] == 1.0


def test_best_by_metric_keeps_the_lowest_wer_and_the_spec_carries_the_language() -> None:
    from types import SimpleNamespace

    import torch

    from services.trainer.recipes import evals

    model = torch.nn.Linear(1, 1)
    scores = iter([0.8, 0.5, 0.6, 0.7])
    best = evals.BestByMetric(lambda m: {"eval_wer": next(scores)}, "eval_wer", 1, 2, lower_is_better=True)
    best.on_train_begin(None, None, None)
    control = SimpleNamespace(should_training_stop=False)
    for step in (1, 2, 3, 4):
        best.on_evaluate(None, SimpleNamespace(global_step=step), control, {"eval_loss": 1.0}, model)
    assert best.best_step == 2 and best.stopped_early and control.should_training_stop
    assert best.rank({"eval_wer": 0.4}) > best.best > best.rank({"eval_wer": 0.9})
    spec = JobSpec(
        run_id="r", tenant_id="t", student_model="m", train_key="a", eval_key="b", output_prefix="p",
        sft=resolve_sft({}), language="jv",
    )  # fmt: skip
    assert JobSpec.from_json(spec.to_json()).language == "jv"
    assert JobSpec.from_dict({k: v for k, v in json.loads(spec.to_json()).items() if k != "language"}).language == ""


# --- the training job ---


def put_split(store: ObjectStore, run_id: str, name: str, rows: list[dict[str, Any]]) -> str:
    lines = []
    for row in rows:
        key = f"tenants/ten_test/datasets/{run_id}/{row['audio']}"
        store.put_bytes(key, row.pop("data"))
        lines.append(json.dumps({**row, "audio_key": key}))
    key = f"tenants/ten_test/splits/{run_id}/{name}.jsonl"
    store.put_bytes(key, ("\n".join(lines) + "\n").encode())
    return key


def clip(name: str, text: str, language: str = "") -> dict[str, Any]:
    row = {"audio": name, "text": text, "data": (CLIPS / name).read_bytes()}
    return {**row, "language": language, "language_source": "declared"} if language else row


@pytest.fixture(scope="module")
def speech_run(store: ObjectStore, whisper: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``speech.train`` itself (no Ray): a full fine-tune of the tiny Whisper on the three example clips (one
    without a language, in both splits), plus a 31 s clip and a clip whose transcript is too long; evaluated on
    the same clips."""
    run_id = "run_speech_full"
    noise = np.random.default_rng(0).normal(0, 0.1, (31 * 8000, 2))
    long_text = "turn off the lights in the kitchen " * 60
    train = [
        clip("turn_off_lights.wav", "turn off the lights in the kitchen", "en"),
        clip("weather.wav", "what is the weather tomorrow in Paris"),
        clip("bonjour.wav", "bonjour, je voudrais réserver une table pour deux", "fr"),
        {"audio": "long.wav", "text": "noise", "language": "en", "data": wav_bytes(noise, 8000)},
        {**clip("turn_off_lights.wav", long_text, "en"), "audio": "long_text.wav"},
    ]
    evals = [
        clip("turn_off_lights.wav", "turn off the lights in the kitchen", "en"),
        clip("weather.wav", "what is the weather tomorrow in Paris"),
        clip("bonjour.wav", "bonjour, je voudrais réserver une table pour deux", "fr"),
    ]
    prefix = f"tenants/ten_test/runs/{run_id}"
    sft = {"max_steps": 120, "learning_rate": 3e-3, "batch_size": 3, "full_finetune": True, "seed": 1,
           "eval_every_steps": 40, "early_stopping_patience": -1}  # fmt: skip
    spec = JobSpec(
        run_id=run_id, tenant_id="ten_test", student_model=str(whisper),
        train_key=put_split(store, run_id, "train", train), eval_key=put_split(store, run_id, "eval", evals),
        output_prefix=prefix, sft=resolve_sft(sft),
    )  # fmt: skip
    root = tmp_path_factory.mktemp("speech-run")
    started = time.monotonic()
    result = speech.train(spec, store, 0, root / "work")
    elapsed = time.monotonic() - started
    model_dir = root / "trained"
    found = store.client.list_objects(store.bucket, prefix=f"{prefix}/model/", recursive=True)
    for entry in found:
        name = entry.object_name.removeprefix(f"{prefix}/model/")
        store.client.fget_object(store.bucket, entry.object_name, str(model_dir / name))
    return {"spec": spec, "result": result, "stored": json.loads(store.get_bytes(f"{prefix}/result.json")),
            "model_dir": model_dir, "seconds": elapsed}  # fmt: skip


def test_training_lowers_the_wer_on_the_training_clips(speech_run: dict[str, Any]) -> None:
    result = speech_run["stored"]
    metrics = result["metrics"]
    print(f"speech run: {speech_run['seconds']:.1f} s; WER {metrics['wer_before']:.3f} -> {metrics['wer_after']:.3f}")
    assert result == speech_run["result"]
    assert metrics["wer_before"] >= 0.9 and metrics["wer_after"] < 0.5 * metrics["wer_before"]
    assert metrics["cer_after"] < metrics["cer_before"] and metrics["wer_raw_after"] >= metrics["wer_after"]
    assert {"en", "fr"} <= set(metrics["per_language_after"]) and metrics["per_language_after"]["fr"]["rows"] == 1
    assert metrics["train_rows"] == 3 and metrics["eval_rows"] == 3 and metrics["steps"] == 120
    assert [e["step"] for e in result["evals"]] == [40, 80, 120]
    assert all("eval_wer" in e["values"] and "eval_loss" in e["values"] for e in result["evals"])
    best = min(result["evals"], key=lambda e: (e["values"]["eval_wer"], e["values"]["eval_loss"]))  # ties: the loss
    assert result["best_step"] == best["step"] and metrics["wer_after"] <= best["values"]["eval_wer"] + 1e-9
    assert result["stop"] == {"reason": "max_steps", "step": 120}
    assert result["artifact_kind"] == "full_weights" and result["artifact_uri"].endswith(
        f"{speech_run['spec'].output_prefix}/model/"
    )


def test_oversized_clips_long_labels_and_detected_languages_are_reported(speech_run: dict[str, Any]) -> None:
    config = speech_run["stored"]["training_config"]
    assert config["oversized_clips"] == ["long.wav"] and speech_run["stored"]["metrics"]["oversized_clips"] == 1
    assert config["train_rows_too_long"] == 1 and config["eval_rows_too_long"] == 0
    train_clip, eval_clip = config["detected_languages"]  # the same audio in both splits: the same language
    assert train_clip == eval_clip and train_clip["audio"] == "weather.wav"
    assert train_clip["language"] in whisper_codes.whisper_languages() and 0.0 < train_clip["probability"] <= 1.0
    assert config["task"] == "transcribe" and config["decoding"]["language"] == "per row"
    assert sum(config["languages"].values()) == 6


def test_the_saved_model_transcribes_the_training_clips(speech_run: dict[str, Any]) -> None:
    model_dir = speech_run["model_dir"]
    for name in ("config.json", "model.safetensors", "generation_config.json", "processor_config.json",
                 "tokenizer_config.json", "training_config.json"):  # fmt: skip
        assert (model_dir / name).exists(), name
    model, tokenizer, extractor = speech.load_trained(model_dir, speech_run["spec"].student_model)
    assert model.generation_config.forced_decoder_ids is None
    from transformers import AutoProcessor

    assert type(AutoProcessor.from_pretrained(model_dir)).__name__ == "WhisperProcessor"  # as Transcribe loads it
    audio = speech_data.decode((CLIPS / "turn_off_lights.wav").read_bytes())
    rows = [{"text": "turn off the lights in the kitchen", "language": "en",
             "input_features": speech_data.features(extractor, audio)}]  # fmt: skip
    [text] = speech_eval.transcribe(model, tokenizer, rows, 40)
    assert speech_eval.score(rows, [text])["wer"] < 0.5, text


def test_the_ray_job_trains_a_lora_adapter_with_checkpoints(
    store: ObjectStore, s3_settings: S3Settings, whisper: Path, tmp_path: Path
) -> None:
    """``python -m services.trainer.recipes.speech`` as the pipeline submits it: a one-worker Ray Train job, LoRA on
    the attention projections (the default), a checkpoint every 2 steps, the language overridden for every clip."""
    run_id = "run_speech_lora"
    rows = [clip("turn_off_lights.wav", "turn off the lights in the kitchen", "en"), clip("bonjour.wav", "bonjour")]
    evals = [clip("weather.wav", "what is the weather tomorrow in Paris")]
    prefix = f"tenants/ten_test/runs/{run_id}"
    spec = JobSpec(
        run_id=run_id, tenant_id="ten_test", student_model=str(whisper),
        train_key=put_split(store, run_id, "train", rows), eval_key=put_split(store, run_id, "eval", evals),
        output_prefix=prefix, language="jv",
        sft=resolve_sft({"max_steps": 4, "learning_rate": 1e-3, "batch_size": 2, "seed": 1, "eval_every_steps": 2,
                         "checkpoint_every_steps": 2}),
    )  # fmt: skip
    store.put_bytes(f"{prefix}/spec.json", spec.to_json().encode(), "application/json")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "DISTILLERY_"))}
    env.update({
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5", "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
        "RAY_JOB_STOP_SIGNAL": "SIGINT",
        "DISTILLERY_S3_ENDPOINT": s3_settings.endpoint, "DISTILLERY_S3_ACCESS_KEY": s3_settings.access_key,
        "DISTILLERY_S3_SECRET_KEY": s3_settings.secret_key, "DISTILLERY_S3_BUCKET": s3_settings.bucket,
        "DISTILLERY_S3_SECURE": "false",
    })  # fmt: skip
    command = [sys.executable, "-m", "services.trainer.recipes.speech", "--spec-key", f"{prefix}/spec.json"]
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]

    result = json.loads(store.get_bytes(f"{prefix}/result.json"))
    assert result["artifact_kind"] == "lora_adapter" and result["metrics"]["steps"] == 4
    assert [e["step"] for e in result["evals"]] == [2, 4]
    config = result["training_config"]
    assert config["language"] == "jw" and config["detected_languages"] == [] and config["languages"] == {"jw": 3}
    assert set(result["metrics"]["per_language_after"]) == {"jw"}
    names = {o.object_name for o in store.client.list_objects(store.bucket, prefix=f"{prefix}/", recursive=True)}
    assert any("/ray/" in name and "checkpoint" in name for name in names)  # Ray Train's checkpoints in S3
    assert f"{prefix}/model/adapter_config.json" in names and f"{prefix}/model/model.safetensors" not in names
    adapter = json.loads(store.get_bytes(f"{prefix}/model/adapter_config.json"))
    assert set(adapter["target_modules"]) == set(speech.LORA_TARGETS)
    model_dir = tmp_path / "trained"
    for name in names:
        if name.startswith(f"{prefix}/model/"):
            store.client.fget_object(store.bucket, name, str(model_dir / name.removeprefix(f"{prefix}/model/")))
    model, tokenizer, extractor = speech.load_trained(model_dir, str(whisper))
    from transformers import AutoProcessor

    assert type(AutoProcessor.from_pretrained(model_dir)).__name__ == "WhisperProcessor"  # beside an adapter too
    audio = speech_data.decode((CLIPS / "weather.wav").read_bytes())
    [text] = speech_eval.transcribe(model, tokenizer, [{"language": "jw", "input_features":
                                                        speech_data.features(extractor, audio)}], 5)  # fmt: skip
    assert isinstance(text, str)


def test_ingests_canonical_rows_are_read_as_stored(store: ObjectStore, whisper: Path) -> None:
    """The rows ingest writes for examples/asr (``validate_asr`` + the clips' keys) read back as the recipe's rows:
    a manifest's language kept (in Whisper's spelling), ingest's guess from the transcript left for the audio."""
    from transformers import WhisperConfig

    from services.ingest.asr import validate_asr

    clips = {path.name: path for path in CLIPS.glob("*.wav")}
    with (CLIPS / "manifest.jsonl").open("rb") as manifest:
        report, canonical = validate_asr(manifest, clips)
    assert report.valid
    lines = []
    for row in canonical:
        row["audio_key"] = f"tenants/ten_test/datasets/ingest/{row['audio']}"
        store.put_bytes(row["audio_key"], clips[row["audio"]].read_bytes())
        lines.append(json.dumps(row))
    store.put_bytes("tenants/ten_test/splits/ingest/train.jsonl", ("\n".join(lines) + "\n").encode())
    extractor = speech_data.feature_extractor(str(whisper), WhisperConfig(num_mel_bins=80))
    rows, oversized = speech_data.read_split(store, "tenants/ten_test/splits/ingest/train.jsonl", "train", extractor)
    assert oversized == [] and [r["audio"] for r in rows] == [r["audio"] for r in canonical]
    by_clip = {r["audio"]: r["language"] for r in rows}
    assert by_clip == {"turn_off_lights.wav": "en", "weather.wav": "", "bonjour.wav": ""}
    assert all(r["input_features"].shape == (80, 3000) for r in rows)
    overridden, _ = speech_data.read_split(
        store, "tenants/ten_test/splits/ingest/train.jsonl", "train", extractor, language_override="fr"
    )
    assert {r["language"] for r in overridden} == {"fr"}
