"""Transcribe: a registered speech model (a tiny random Whisper, full weights or a LoRA adapter over
its base) transcribes a real clip from examples/asr through the registry and the CLI.

A random model's text is gibberish: what is checked is that the registry answers exactly what the
same model answers when asked directly with transformers (greedy decoding, the language set in the
generation config, Whisper's own language detection when none is given), and every refusal.
"""

from __future__ import annotations

import io
import json
import secrets
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner
from rpc_refusals import field_of, raised, refused
from test_tracing_and_cli import cli_env
from trained_models import register, upload

from distillery.cli.main import cli
from distillery.common.v1 import common_pb2
from distillery.registry.v1 import registry_pb2
from services.common import whisper
from tests.tiny_models import build_whisper

CLIP = Path(__file__).resolve().parent.parent / "examples" / "asr" / "weather.wav"
ASR = common_pb2.TRAINING_PATH_FINETUNE_ASR
LORA = registry_pb2.ARTIFACT_KIND_LORA_ADAPTER
FULL = registry_pb2.ARTIFACT_KIND_FULL_WEIGHTS
TIMEOUT_S = 120


@pytest.fixture(scope="module")
def whispers(tmp_path_factory) -> dict[str, Path]:
    """A base Whisper (full weights) and a LoRA adapter over it (saved with the processor), as a recipe saves them."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    root = tmp_path_factory.mktemp("whispers")
    base = build_whisper(root / "base")
    adapter = get_peft_model(
        WhisperForConditionalGeneration.from_pretrained(base), LoraConfig(r=4, target_modules=["q_proj", "v_proj"])
    )
    torch.manual_seed(1)
    with torch.no_grad():  # LoRA starts as a no-op: move it, so the adapter's answers are its own
        for name, parameter in adapter.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    adapter.save_pretrained(root / "lora")
    WhisperProcessor.from_pretrained(base).save_pretrained(root / "lora")
    return {"base": base, "lora": root / "lora"}


def samples_16k(data: bytes):
    import soundfile
    import soxr

    samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return soxr.resample(samples.mean(axis=1), rate, 16_000)


def direct(whispers: dict[str, Path], kind: int, data: bytes, language: str = "") -> tuple[str, str]:
    """(text, language) as transformers answers for the model itself: greedy, language in the generation config."""
    import torch
    from peft import PeftModel
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    model = WhisperForConditionalGeneration.from_pretrained(whispers["base"])
    if kind == LORA:
        model = PeftModel.from_pretrained(model, whispers["lora"]).merge_and_unload()
    model.eval()
    processor = WhisperProcessor.from_pretrained(whispers["base"])
    features = processor.feature_extractor(samples_16k(data), sampling_rate=16_000, return_tensors="pt").input_features
    with torch.inference_mode():
        if not language:
            found = int(model.detect_language(features)[0])
            language = next(t for t, i in model.generation_config.lang_to_id.items() if i == found).strip("<|>")
        out = model.generate(features, language=language, task="transcribe", do_sample=False, num_beams=1,
                             max_new_tokens=whisper.max_new_tokens(model.config.max_target_positions))  # fmt: skip
    return processor.tokenizer.decode(out[0], skip_special_tokens=True).strip(), language


def speech_model(services, service, tenant_id: str, whispers: dict[str, Path], kind: int) -> registry_pb2.Model:
    """Upload and register as the speech recipe does: path finetune-asr, the model under the run's model/."""
    run_id = f"run_{secrets.token_hex(6)}"
    directory = whispers["lora" if kind == LORA else "base"]
    uri = upload(services, directory, f"tenants/{tenant_id}/runs/{run_id}/model/")
    service.ReserveQuota(registry_pb2.ReserveQuotaRequest(run_id=run_id))
    return service.RegisterModel(
        registry_pb2.RegisterModelRequest(
            run_id=run_id, name="speech", path=ASR, base_model=str(whispers["base"]), artifact_kind=kind,
            artifact_uri=uri, metrics={"wer_after": 0.5},
        )
    )  # fmt: skip


def transcribe(client, model_id: str, audio: bytes, language: str = "") -> registry_pb2.TranscribeResponse:
    request = registry_pb2.TranscribeRequest(model_id=model_id, audio=audio, language=language)
    return client.registry.Transcribe(request, timeout=TIMEOUT_S)


@pytest.mark.parametrize("kind", [FULL, LORA], ids=["full", "lora"])
def test_a_speech_model_transcribes_as_transformers_does(
    services, make_tenant, client_for, service_registry_for, whispers, kind
):
    tenant = make_tenant()
    client = client_for(tenant)
    model = speech_model(services, service_registry_for(tenant), tenant.tenant_id, whispers, kind)
    data = CLIP.read_bytes()

    detected = transcribe(client, model.id, data)
    text, language = direct(whispers, kind, data)
    assert detected.text and (detected.text, detected.language) == (text, language)
    assert 0 < detected.language_probability <= 1 and detected.latency_ms > 0
    assert detected.duration_s == pytest.approx(43155 / 22050)

    french = transcribe(client, model.id, data, language="French")
    assert (french.text, french.language, french.language_probability) == (*direct(whispers, kind, data, "fr"), 1.0)

    # The CLI: the text, then the language.
    env = cli_env(services, tenant.api_key)
    said = CliRunner().invoke(cli, ["models", "transcribe", model.id, str(CLIP), "--language", "fr"], env=env)
    assert said.exit_code == 0, said.output
    assert said.output.splitlines() == [french.text, "language: fr"]
    said = CliRunner().invoke(cli, ["models", "transcribe", model.id, str(CLIP), "--json"], env=env)
    assert json.loads(said.output)["language"] == language


def test_each_kind_of_model_refuses_the_other_rpc(services, make_tenant, client_for, service_registry_for, whispers):
    tenant = make_tenant()
    client, service = client_for(tenant), service_registry_for(tenant)
    speech = speech_model(services, service, tenant.tenant_id, whispers, FULL)
    ask = registry_pb2.GenerateRequest(
        model_id=speech.id, messages=[registry_pb2.ChatMessage(role="user", content="hi")]
    )
    err = refused(lambda: client.registry.Generate(ask, timeout=TIMEOUT_S), grpc.StatusCode.FAILED_PRECONDITION)
    assert "Transcribe" in err.details()

    text = register(service, f"run_{secrets.token_hex(6)}", FULL, f"tenants/{tenant.tenant_id}/runs/x/model/", "base")
    err = refused(lambda: transcribe(client, text.id, CLIP.read_bytes()), grpc.StatusCode.FAILED_PRECONDITION)
    assert "Generate" in err.details()

    # Snippets: a speech model's show transcription.
    snippets = client.registry.GetSnippet(registry_pb2.GetSnippetRequest(model_id=speech.id)).snippets
    assert snippets["cli"] == f"distillery models transcribe {speech.id} clip.wav"
    assert "RegistryService/Transcribe" in snippets["grpcurl"] and "audio.transcriptions.create(" in snippets["python"]
    text_snippets = client.registry.GetSnippet(registry_pb2.GetSnippetRequest(model_id=text.id)).snippets
    assert "models generate" in text_snippets["cli"] and "RegistryService/Generate" in text_snippets["grpcurl"]


def wav(seconds: float, rate: int, channels: int = 1, subtype: str = "PCM_16", fmt: str = "WAV") -> bytes:
    import numpy as np
    import soundfile

    frames = int(seconds * rate)
    tone = 0.1 * np.sin(np.arange(frames) * 2 * np.pi * 440 / rate).astype("float32")
    out = io.BytesIO()
    soundfile.write(out, np.stack([tone] * channels, axis=1), rate, subtype=subtype, format=fmt)
    return out.getvalue()


def test_bad_audio_and_languages_are_refused_naming_the_field(
    services, make_tenant, client_for, service_registry_for, whispers
):
    tenant = make_tenant()
    client = client_for(tenant)
    model = speech_model(services, service_registry_for(tenant), tenant.tenant_id, whispers, FULL)
    for audio, words in (
        (b"", "empty"),
        (b"hello, not audio at all", "not a readable .wav"),
        (CLIP.read_bytes()[:30], "not a readable .wav"),
        (wav(1, 16_000, fmt="FLAC"), "FLAC"),
        (wav(31, 8_000), "31.0 s"),
        (b"RIFF" + bytes(25 * 1024 * 1024), "MiB"),
    ):
        err = refused(lambda: transcribe(client, model.id, audio))  # noqa: B023
        assert field_of(err) == "audio" and words in err.details(), (words, err.details())
    for language in ("klingon", "xx"):
        err = refused(lambda: transcribe(client, model.id, CLIP.read_bytes(), language))  # noqa: B023
        assert field_of(err) == "language", err.details()

    # Any rate and channel count is mixed down and resampled to 16 kHz.
    for audio in (wav(2, 44_100, channels=2, subtype="FLOAT"), wav(0.5, 8_000, subtype="PCM_24")):
        reply = transcribe(client, model.id, audio)
        assert reply.language and reply.duration_s > 0


def test_another_tenants_speech_model_is_not_found(services, make_tenant, client_for, service_registry_for, whispers):
    owner = make_tenant()
    model = speech_model(services, service_registry_for(owner), owner.tenant_id, whispers, FULL)
    err = raised(lambda: transcribe(client_for(make_tenant()), model.id, CLIP.read_bytes()))
    assert err.code() == grpc.StatusCode.NOT_FOUND
