"""Transcribe: runtime testing of a registered speech model (path TRAINING_PATH_FINETUNE_ASR).

A speech model's directory holds a Hugging Face Whisper (full weights, or a LoRA adapter
over ``base_model``) with its processor (feature extractor and tokenizer). It is fetched,
cached and kept loaded exactly as ``Generate``'s text models are (``generate.Generator``);
this module decodes the clip, loads the model and transcribes.

- The clip: a .wav (``soundfile``), mixed down to mono and resampled to Whisper's 16 kHz
  (``soxr``); at most ``MAX_AUDIO_BYTES`` and ``MAX_SECONDS`` (Whisper's window). Anything
  else is INVALID_ARGUMENT naming ``audio``.
- The features: the model's own feature extractor (its mel bins: 128 for v3, 80 before).
- The language: the request's (a Whisper code such as ``en``, ``yue``, or a name such as
  ``english``), set in the generation config (never ``forced_decoder_ids``); with none,
  Whisper's own detection from the audio (the language token most probable after
  ``<|startoftranscript|>``), with its probability. An English-only model answers ``en``.
- Decoding: greedy, task ``transcribe``, at most half the decoder's positions (as Whisper does, and as a
  run's evaluations decode: ``services/common/whisper.py``).
"""

from __future__ import annotations

import copy
import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distillery.registry.v1 import registry_pb2
from services.common import whisper
from services.common.errors import FailedPrecondition, InvalidArgument

SAMPLE_RATE = 16_000
MAX_SECONDS = 30.0
MAX_AUDIO_BYTES = 25 * 1024 * 1024
# What soundfile calls the WAV family (RIFF, WAVE_FORMAT_EXTENSIBLE, RF64, Sony Wave64).
WAV_FORMATS = frozenset({"WAV", "WAVEX", "RF64", "W64"})


@dataclass(frozen=True)
class Clip:
    samples: Any  # float32 numpy array, mono, 16 kHz
    duration_s: float


@dataclass(frozen=True)
class Speech:
    """A speech model in memory."""

    model: Any  # a transformers WhisperForConditionalGeneration
    processor: Any  # its WhisperProcessor


@dataclass(frozen=True)
class Transcript:
    text: str
    language: str
    language_probability: float
    duration_s: float
    latency_ms: float


def decode_wav(audio: bytes) -> Clip:
    """The clip as 16 kHz mono float32 samples, or INVALID_ARGUMENT naming ``audio`` with why not."""
    import numpy as np
    import soundfile
    import soxr

    if not audio:
        raise InvalidArgument("audio is empty: give the bytes of a .wav file", field="audio")
    if len(audio) > MAX_AUDIO_BYTES:
        raise InvalidArgument(
            f"audio is {len(audio)} bytes: give a .wav of at most {MAX_AUDIO_BYTES // (1024 * 1024)} MiB", field="audio"
        )
    try:
        info = soundfile.info(io.BytesIO(audio))
    except (RuntimeError, ValueError, TypeError):
        raise InvalidArgument("audio is not a readable .wav file", field="audio") from None
    if info.format not in WAV_FORMATS:
        raise InvalidArgument(f"audio is a {info.format} file: give a .wav file", field="audio")
    if info.frames <= 0 or info.samplerate <= 0 or info.channels <= 0:
        raise InvalidArgument("audio holds no samples", field="audio")
    duration = info.frames / info.samplerate
    if duration > MAX_SECONDS:
        raise InvalidArgument(
            f"audio is {duration:.1f} s long: give a clip of at most {MAX_SECONDS:g} s (Whisper's window); "
            "split longer recordings",
            field="audio",
        )
    try:
        samples, rate = soundfile.read(io.BytesIO(audio), dtype="float32", always_2d=True)
    except (RuntimeError, ValueError, TypeError):
        raise InvalidArgument("audio is not a readable .wav file", field="audio") from None
    if samples.size == 0:
        raise InvalidArgument("audio holds no samples", field="audio")
    mono = np.clip(np.nan_to_num(samples.mean(axis=1), nan=0.0, posinf=1.0, neginf=-1.0), -1.0, 1.0)
    if rate != SAMPLE_RATE:
        mono = soxr.resample(mono, rate, SAMPLE_RATE)
    return Clip(np.ascontiguousarray(mono, dtype=np.float32), len(samples) / rate)


def load(directory: Path, base_model: str, artifact_kind: int) -> Speech:
    """The speech model saved in ``directory``: full weights, or a LoRA adapter merged into ``base_model``;
    its processor from the directory (or, if the run saved none, from the base model)."""
    import torch
    from transformers import AutoModelForSpeechSeq2Seq, AutoProcessor

    adapter = artifact_kind == registry_pb2.ARTIFACT_KIND_LORA_ADAPTER or (
        artifact_kind == registry_pb2.ARTIFACT_KIND_UNSPECIFIED and (directory / "adapter_config.json").exists()
    )
    try:
        if adapter:
            from peft import PeftModel

            base = AutoModelForSpeechSeq2Seq.from_pretrained(base_model, dtype="auto")
            model = PeftModel.from_pretrained(base, directory).merge_and_unload()
        else:
            model = AutoModelForSpeechSeq2Seq.from_pretrained(directory, dtype="auto")
    except (OSError, ValueError) as err:
        raise FailedPrecondition(f"the speech model cannot be loaded: {err}", field="base_model") from None
    saved = ("preprocessor_config.json", "processor_config.json")
    has_processor = any((directory / name).is_file() for name in saved)
    try:
        processor = AutoProcessor.from_pretrained(directory if has_processor else base_model)
    except (OSError, ValueError) as err:
        raise FailedPrecondition(f"the speech model's processor cannot be loaded: {err}", field="base_model") from None
    if torch.cuda.is_available():
        model = model.to("cuda")
    return Speech(model.eval(), processor)


def language_code(generation_config: Any, language: str) -> str:
    """The request's language as the model's code ("" for none), or INVALID_ARGUMENT naming ``language``."""
    if not language.strip():
        return ""
    try:
        code = whisper.whisper_language(language)
    except ValueError:
        raise InvalidArgument(
            f"language {language[:40]!r} is not a Whisper language: give a code such as 'en', 'fr' or 'yue'",
            field="language",
        ) from None
    known = _languages(generation_config)
    if known is None:
        if code != "en":
            raise InvalidArgument(f"the model is English-only: language {code!r} is not one it knows", field="language")
        return code
    if code not in known:
        raise InvalidArgument(f"the model has no language token for {code!r}", field="language")
    return code


def transcribe(speech: Speech, clip: Clip, language: str) -> Transcript:
    """The clip's text by greedy decoding, in ``language`` (a code from ``language_code``) or the detected one."""
    import torch

    started = time.perf_counter()
    model, processor = speech.model, speech.processor
    extractor = processor.feature_extractor
    features = extractor(clip.samples, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
    features = features.to(model.device, dtype=model.dtype)
    config = copy.deepcopy(model.generation_config)
    config.forced_decoder_ids = None
    known = _languages(config)
    probability = 1.0
    with torch.inference_mode():
        if known is None:
            language = "en"
        else:
            if not language:
                language, probability = _detect(model, features, config)
            config.language = language
            config.task = "transcribe"
        config.do_sample = False
        config.num_beams = 1
        config.max_length = None
        config.max_new_tokens = whisper.max_new_tokens(model.config.max_target_positions)  # as the run evaluated
        output = model.generate(features, generation_config=config)
    sequences = output.sequences if hasattr(output, "sequences") else output
    text = processor.tokenizer.decode(sequences[0], skip_special_tokens=True).strip()
    return Transcript(text, language, probability, clip.duration_s, (time.perf_counter() - started) * 1000)


def _languages(config: Any) -> dict[str, int] | None:
    """The model's language codes and token ids; None for an English-only model."""
    lang_to_id = getattr(config, "lang_to_id", None) or {}
    if not getattr(config, "is_multilingual", bool(lang_to_id)) or not lang_to_id:
        return None
    return {token.strip("<|>"): token_id for token, token_id in lang_to_id.items()}


def _detect(model: Any, features: Any, config: Any) -> tuple[str, float]:
    """Whisper's language detection: the most probable language token after ``<|startoftranscript|>``."""
    import torch

    known = _languages(config) or {}
    codes, ids = list(known), list(known.values())
    start = torch.full((features.shape[0], 1), config.decoder_start_token_id, dtype=torch.long, device=model.device)
    logits = model(input_features=features, decoder_input_ids=start, use_cache=False).logits[0, -1]
    probabilities = torch.softmax(logits[ids].float(), dim=-1)
    best = int(probabilities.argmax())
    return codes[best], float(probabilities[best])
