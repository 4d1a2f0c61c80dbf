"""The speech recipe's data: a split's clips read from S3, decoded, resampled, turned into features and labels.

A split is ingest's canonical asr JSONL: one row a clip, ``{"audio", "text", "language", "language_source",
"duration_s", ..., "audio_key"}`` (``audio_key``: the clip's S3 key). For each row ``read_split``:

1. reads the clip and decodes it with soundfile, mixes it to mono and resamples it to 16 kHz with soxr
   (``decode``); a clip over 30 s (Whisper's window) is left out and reported by name;
2. computes log-mel features with the model's own ``WhisperFeatureExtractor`` (``feature_extractor``: its bins
   are the model config's ``num_mel_bins``, 128 for large-v3, 80 for the others);
3. keeps the row's language in Whisper's spelling (``services/common/whisper.py``), or none when the row has
   none or only ingest's guess from the transcript (the recipe detects those from the audio: ``speech_eval``).

``labels`` then gives a row's labels: Whisper's prefix (start of transcript, the row's language, transcribe,
no timestamps: the same prefix ``generate`` starts from with that language and task) + the text + end of text;
rows whose labels pass ``MAX_LABEL_TOKENS`` are left out and counted (``cap_labels``).
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from services.common import whisper
from services.common.objects import ObjectStore
from services.trainer.recipes import failures
from services.trainer.recipes.splits import split_lines

SAMPLE_RATE = 16_000
MAX_CLIP_SECONDS = 30.0
MAX_LABEL_TOKENS = 448  # Whisper's decoder positions
TASK = "transcribe"


def decode(data: bytes) -> np.ndarray:
    """A clip's samples: mono float32 at 16 kHz."""
    import soundfile
    import soxr

    audio, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    mono = audio.mean(axis=1)
    if rate != SAMPLE_RATE:
        mono = soxr.resample(mono, rate, SAMPLE_RATE)
    return np.asarray(mono, dtype=np.float32)


def feature_extractor(source: str, config: Any) -> Any:
    """The model's ``WhisperFeatureExtractor`` (saved beside it), with as many mel bins as its config says;
    built from the config when the model has none saved."""
    from transformers import WhisperFeatureExtractor

    bins = int(config.num_mel_bins)
    try:
        extractor = WhisperFeatureExtractor.from_pretrained(source)
    except OSError:
        return WhisperFeatureExtractor(feature_size=bins)
    if extractor.feature_size != bins:
        return WhisperFeatureExtractor(feature_size=bins, sampling_rate=extractor.sampling_rate)
    return extractor


def features(extractor: Any, audio: np.ndarray) -> np.ndarray:
    """Log-mel features of one clip, padded to Whisper's 30 s window: ``(num_mel_bins, 3000)``."""
    out = extractor(audio, sampling_rate=SAMPLE_RATE, return_tensors="np")
    return np.asarray(out["input_features"][0], dtype=np.float32)


def row_language(raw: dict[str, Any], override: str, where: str) -> str:
    """The row's Whisper language: the run's override, else the row's own (unless ingest only guessed it from
    the transcript), else "" (detected from the audio)."""
    if override:
        return whisper.whisper_language(override)
    language = raw.get("language") or ""
    if not isinstance(language, str) or not language or raw.get("language_source") == "detected":
        return ""
    try:
        return whisper.whisper_language(language)
    except ValueError as err:
        raise failures.invalid_dataset(f"{where}: {err}") from None


def read_split(
    store: ObjectStore, key: str, name: str, extractor: Any, language_override: str = ""
) -> tuple[list[dict[str, Any]], list[str]]:
    """The split's clips as rows ``{"audio", "text", "language", "input_features"}`` and the names of the clips
    left out for being over ``MAX_CLIP_SECONDS`` (module docstring)."""
    rows, oversized = [], []
    for where, line in split_lines(store, key, name):
        try:
            raw = json.loads(line)
            clip, text, audio_key = raw["audio"], raw["text"], raw["audio_key"]
        except (ValueError, KeyError, TypeError):
            raise failures.invalid_dataset(f"{where}: not an asr row (audio, text, audio_key)") from None
        if not (isinstance(text, str) and isinstance(audio_key, str) and audio_key):
            raise failures.invalid_dataset(f"{where}: the row needs a text and the key of its clip")
        try:
            audio = decode(store.get_bytes(audio_key))
        except Exception as err:  # soundfile's errors, or a clip that is gone
            raise failures.invalid_dataset(
                f"{where}: cannot read the clip {clip!r} ({type(err).__name__}: {err}): upload the dataset again"
            ) from None
        if len(audio) > MAX_CLIP_SECONDS * SAMPLE_RATE:
            oversized.append(str(clip))
            continue
        rows.append({
            "audio": str(clip), "text": text, "language": row_language(raw, language_override, where),
            "input_features": features(extractor, audio),
        })  # fmt: skip
    return rows, oversized


def prefix_ids(tokenizer: Any, language: str) -> list[int]:
    """Whisper's decoder prefix for ``language``: start of transcript, the language, transcribe, no timestamps."""
    tokens = ["<|startoftranscript|>", f"<|{language}|>", f"<|{TASK}|>", "<|notimestamps|>"]
    ids = [int(i) for i in tokenizer.convert_tokens_to_ids(tokens)]
    if tokenizer.unk_token_id in ids[1:2] and tokenizer.convert_ids_to_tokens(ids[1]) != tokens[1]:
        raise failures.invalid_dataset(f"the model's tokenizer has no token for the language {language!r}")
    return ids


def labels(tokenizer: Any, text: str, language: str) -> list[int]:
    """A row's labels: the prefix, the text's tokens, end of text."""
    body = tokenizer(text, add_special_tokens=False)["input_ids"]
    return [*prefix_ids(tokenizer, language), *body, int(tokenizer.eos_token_id)]


def cap_labels(rows: list[dict[str, Any]], tokenizer: Any, limit: int = MAX_LABEL_TOKENS) -> tuple[list[Any], int]:
    """The rows with their ``labels`` set, those over ``limit`` tokens left out; and how many were."""
    kept, too_long = [], 0
    for row in rows:
        ids = labels(tokenizer, row["text"], row["language"])
        if len(ids) > limit:
            too_long += 1
            continue
        kept.append({**row, "labels": ids})
    return kept, too_long


class Collator:
    """Batches of rows for the trainer: features stacked; labels padded with -100, their start-of-transcript
    token dropped (the model puts its ``decoder_start_token_id`` before them itself)."""

    def __init__(self, decoder_start_token_id: int) -> None:
        self.start = decoder_start_token_id

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        import torch

        ids = [r["labels"][1:] if r["labels"] and r["labels"][0] == self.start else r["labels"] for r in rows]
        width = max(len(i) for i in ids)
        padded = torch.full((len(ids), width), -100, dtype=torch.long)
        for n, row_ids in enumerate(ids):
            padded[n, : len(row_ids)] = torch.tensor(row_ids, dtype=torch.long)
        stacked = torch.from_numpy(np.stack([r["input_features"] for r in rows]))
        return {"input_features": stacked, "labels": padded}
