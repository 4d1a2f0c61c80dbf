"""A finetune-asr run end to end over the real stack: a tiny random Whisper (built from a config with a
locally trained tokenizer) fine-tuned on the real speech clips of examples/asr.

The clips are uploaded as an asr dataset (the three clips, a quieter copy of each, a 31 s clip that ingest
flags as oversized, and a renamed copy of an eval clip) and an asr eval dataset (a still quieter copy of each).
The run goes through every state; the split leaves the eval clip's copy out of training (by content, whatever
its name); the recipe leaves the 31 s clip out and the run says so; the registered model carries its WER
before and after; ``Transcribe`` answers each eval clip exactly as the run recorded, so the WER the run
reports is the WER a user gets; and the training clips' WER, through ``Transcribe``, falls from the base
model's.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
from click.testing import CliRunner
from test_services import upload
from test_tracing_and_cli import cli_env
from test_training import EVERY_STATE, ROWS, states, watch

from distillery.cli.main import cli
from distillery.common.v1 import common_pb2
from distillery.ingest.v1 import ingest_pb2
from distillery.registry.v1 import registry_pb2
from distillery.trainer.v1 import trainer_pb2 as pb
from distillery.uploads import Upload, send
from services.common import whisper
from services.common.objects import ObjectStore
from services.trainer.recipes import speech_data, speech_eval
from tests.tiny_models import build_whisper

CLIPS = Path(__file__).resolve().parent.parent / "examples" / "asr"
SPOKEN = {  # clip: (transcript, language as the manifest gives it; "" leaves it to detection)
    "turn_off_lights.wav": ("turn off the lights in the kitchen", "en"),
    "weather.wav": ("what is the weather tomorrow in Paris", ""),
    "bonjour.wav": ("bonjour, je voudrais réserver une table pour deux", "fr"),
}
ASR = common_pb2.TRAINING_PATH_FINETUNE_ASR
LEARN = pb.SftSettings(max_steps=120, learning_rate=3e-3, batch_size=3, full_finetune=True, seed=1,
                       eval_every_steps=40, early_stopping_patience=-1)  # fmt: skip


def quieter(name: str, gain: float) -> bytes:
    """The clip at ``gain`` of its loudness: other bytes, the same words."""
    samples, rate = soundfile.read(CLIPS / name, dtype="float32", always_2d=True)
    out = io.BytesIO()
    soundfile.write(out, samples * gain, rate, format="WAV", subtype="PCM_16")
    return out.getvalue()


def asr_upload(client, folder: Path, clips: dict[str, tuple[bytes, str, str]]) -> ingest_pb2.UploadDatasetResponse:
    """An asr dataset of ``clips``: file name -> (WAV bytes, transcript, language)."""
    folder.mkdir()
    rows = []
    for name, (data, text, language) in clips.items():
        (folder / name).write_bytes(data)
        rows.append({"audio": name, "text": text, **({"language": language} if language else {})})
    manifest = folder / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return send(client.ingest, Upload([manifest, *(folder / name for name in clips)], ingest_pb2.DATASET_KIND_ASR,
                                      manifest=manifest))  # fmt: skip


def base_wer(base: Path, clips: dict[str, tuple[bytes, str, str]], languages: dict[str, str]) -> float:
    """The base model's WER on ``clips``, decoded as the recipe and Transcribe decode (each clip's language)."""
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperTokenizer

    model = WhisperForConditionalGeneration.from_pretrained(base)
    extractor, tokenizer = WhisperFeatureExtractor.from_pretrained(base), WhisperTokenizer.from_pretrained(base)
    rows = [{"text": text, "language": languages[name],
             "input_features": speech_data.features(extractor, speech_data.decode(data))}
            for name, (data, text, _) in clips.items()]  # fmt: skip
    hypotheses = speech_eval.transcribe(
        model, tokenizer, rows, whisper.max_new_tokens(model.config.max_target_positions)
    )
    return float(speech_eval.score(rows, hypotheses)["wer"])


@pytest.fixture(scope="module")
def tiny_whisper(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_whisper(tmp_path_factory.mktemp("asr-run") / "tiny-whisper")


def test_a_finetune_asr_run_trains_registers_and_transcribes(services, client_for, make_tenant, tiny_whisper, tmp_path):
    tenant = make_tenant()
    client = client_for(tenant)
    train_clips = {name: ((CLIPS / name).read_bytes(), text, language) for name, (text, language) in SPOKEN.items()}
    train_clips |= {f"quiet_{name}": (quieter(name, 0.8), text, language) for name, (text, language) in SPOKEN.items()}
    noise = np.random.default_rng(0).normal(0, 0.05, 31 * 16_000).astype(np.float32)
    long_clip = io.BytesIO()
    soundfile.write(long_clip, noise, 16_000, format="WAV", subtype="PCM_16")
    train_clips["long.wav"] = (long_clip.getvalue(), "a long recording", "en")
    eval_clips = {f"quietest_{name}": (quieter(name, 0.6), text, language) for name, (text, language) in SPOKEN.items()}
    train_clips["kitchen.wav"] = eval_clips["quietest_turn_off_lights.wav"]  # an eval clip under another name

    dataset = asr_upload(client, tmp_path / "train", train_clips)
    assert dataset.dataset.valid and [w.code for w in dataset.report.warnings] == ["oversized_clip"]
    eval_dataset = asr_upload(client, tmp_path / "eval", eval_clips)
    request = pb.CreateRunRequest(path=ASR, dataset_id=dataset.dataset.id, eval_dataset_id=eval_dataset.dataset.id,
                                  student_model=str(tiny_whisper), sft=LEARN, model_name="kitchen-asr")  # fmt: skip
    run = client.trainer.CreateRun(request)
    assert run.request.recipe == "speech"  # the path's recipe, under the settings the request gave

    events = watch(client, run.id, timeout=600)
    done = client.trainer.GetRun(pb.GetRunRequest(id=run.id))
    assert done.state == pb.RUN_STATE_SUCCEEDED, done.error
    assert states(events) == EVERY_STATE
    notes = [e.log.text for e in events if e.WhichOneof("payload") == "log"]
    assert any("7 train rows, 3 eval rows, 1 train rows dropped as duplicates" in n for n in notes), notes
    assert any("left out 1 clip(s) over 30 s" in n and "long.wav" in n for n in notes), notes
    assert any("S3 keys scoped to the run" in n for n in notes), notes  # which reach its clips and no other upload
    metrics = done.metrics
    assert metrics["train_rows"] == 6 and metrics["eval_rows"] == 3 and metrics["oversized_clips"] == 1
    assert [e.step for e in done.evals] == [40, 80, 120]
    print(f"asr run: WER {metrics['wer_before']:.3f} -> {metrics['wer_after']:.3f}")
    assert metrics["wer_after"] < metrics["wer_before"]

    model = client.registry.GetModel(registry_pb2.GetModelRequest(id=done.model_id))
    assert model.path == ASR and model.name == "kitchen-asr" and model.base_model == str(tiny_whisper)
    assert model.metrics["wer_before"] == metrics["wer_before"] and model.metrics["wer_after"] == metrics["wer_after"]

    # What the run reports is what Transcribe answers: each eval clip's transcript, and so the WER.
    prefix = model.artifact_uri.removeprefix(f"s3://{services.s3.bucket}/")
    recorded = json.loads(ObjectStore(services.s3).get_bytes(f"{prefix}eval_transcripts.json"))["rows"]
    assert sorted(row["audio"] for row in recorded) == sorted(eval_clips)
    for row in recorded:
        reply = client.registry.Transcribe(registry_pb2.TranscribeRequest(
            model_id=model.id, audio=eval_clips[row["audio"]][0], language=row["language"]))  # fmt: skip
        assert reply.text == row["transcript"], (row, reply.text)
    assert speech_eval.score(recorded, [r["transcript"] for r in recorded])["wer"] == pytest.approx(
        metrics["wer_after"]
    )

    # The training clips: Transcribe's WER on them is far below the base model's.
    languages = {row["audio"].removeprefix("quietest_"): row["language"] for row in recorded}
    languages |= {f"quiet_{name}": language for name, language in languages.items()}
    trained = {name: clip for name, clip in train_clips.items() if name in languages}
    before = base_wer(tiny_whisper, trained, languages)
    texts = [client.registry.Transcribe(registry_pb2.TranscribeRequest(model_id=model.id, audio=data,
                                                                        language=languages[name])).text
             for name, (data, _, _) in trained.items()]  # fmt: skip
    rows = [{"text": text, "language": languages[name]} for name, (_, text, _) in trained.items()]
    after = speech_eval.score(rows, texts)["wer"]
    print(f"training clips through Transcribe: WER {before:.3f} -> {after:.3f}: {texts}")
    assert before >= 0.9 and after < 0.3 * before

    # The CLI transcribes too, and a text model's dataset is refused by the run, naming the field and the kind.
    result = CliRunner().invoke(
        cli,
        [
            "models",
            "transcribe",
            model.id,
            str(tmp_path / "eval" / recorded[0]["audio"]),
            "--language",
            recorded[0]["language"],
        ],
        env=cli_env(services, tenant.api_key),
    )
    assert result.exit_code == 0 and recorded[0]["transcript"] in result.output, result.output
    pairs = upload(client, ROWS).dataset
    wrong = client.trainer.CreateRun(
        pb.CreateRunRequest(path=ASR, dataset_id=pairs.id, student_model=str(tiny_whisper))
    )
    watch(client, wrong.id, timeout=60)
    failed = client.trainer.GetRun(pb.GetRunRequest(id=wrong.id))
    assert (failed.state, failed.error.code, failed.error.field) == (
        pb.RUN_STATE_FAILED,
        "invalid_dataset",
        "dataset_id",
    )
    assert "--kind asr" in failed.error.message, failed.error.message


def test_the_cli_estimates_a_speech_run_with_the_speech_recipes_whisper(services, client_for, make_tenant, tmp_path):
    tenant = make_tenant()
    clips = {name: ((CLIPS / name).read_bytes(), text, language) for name, (text, language) in SPOKEN.items()}
    dataset = asr_upload(client_for(tenant), tmp_path / "clips", clips).dataset
    env = cli_env(services, tenant.api_key)
    result = CliRunner().invoke(
        cli,
        ["runs", "create", "--path", "finetune-asr", "--dataset", dataset.id, "--language", "jv", "--estimate"],
        env=env,
    )
    assert result.exit_code == 0, result.output
    assert "a 1,550M-parameter student" in " ".join(result.output.split()), result.output
    refused = CliRunner().invoke(
        cli, ["runs", "create", "--path", "finetune-asr", "--dataset", dataset.id, "--language", "klingon"], env=env
    )
    assert refused.exit_code != 0 and "language" in refused.output and "klingon" in refused.output, refused.output
