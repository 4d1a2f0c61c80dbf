"""How the OCR recipe scores what a model reads.

- **Normalisation** (``normalise``): Unicode NFKC (full-width forms, ligatures and compatibility characters
  become their plain letters and digits), then every run of whitespace (line breaks too) one space, stripped.
  Case and punctuation are kept: on receipts and IDs they are part of the text.
- **Error rates** (``score``): jiwer's CER (characters) and WER (words) over all rows, raw (the texts as they
  are) and normalised, and the exact-match rate (the reading equals the reference), raw and normalised. The
  figure a run evaluates on and reports first is ``cer``, the normalised CER.
- **Readings** (``readings``): each row's image read under its prompt by ``services/common/ocr_reading.read``
  (what the registry's ``ReadImage`` calls), a few images decoded at a time.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from typing import Any

from services.common import ocr_reading
from services.trainer.recipes import ocr_data
from services.trainer.recipes.speech_eval import error_rate

READ_BATCH = 8


def normalise(text: str) -> str:
    """NFKC, whitespace collapsed to single spaces, stripped."""
    return " ".join(unicodedata.normalize("NFKC", text).split())


def exact_match(references: Sequence[str], readings: Sequence[str]) -> float:
    """The share of readings equal to their reference (0.0 for no rows)."""
    if not references:
        return 0.0
    return sum(r == h for r, h in zip(references, readings, strict=True)) / len(references)


def score(references: Sequence[str], readings: Sequence[str]) -> dict[str, float]:
    """``{"cer", "wer", "exact_match"}`` on normalised texts and ``{"cer_raw", "wer_raw", "exact_match_raw"}``
    on the texts as they are (module docstring)."""
    refs, hyps = [normalise(r) for r in references], [normalise(h) for h in readings]
    return {
        "cer": error_rate(refs, hyps, cer=True),
        "wer": error_rate(refs, hyps, cer=False),
        "exact_match": exact_match(refs, hyps),
        "cer_raw": error_rate(references, readings, cer=True),
        "wer_raw": error_rate(references, readings, cer=False),
        "exact_match_raw": exact_match(references, readings),
    }


def readings(
    model: Any, processor: Any, rows: Sequence[dict[str, Any]], max_new_tokens: int, image_mode: str = ""
) -> list[str]:
    """What the model reads in each row's image under the row's prompt, in the rows' order."""
    out: list[str] = []
    for start in range(0, len(rows), READ_BATCH):
        chunk = rows[start : start + READ_BATCH]
        prompts = [row["prompt"] for row in chunk]
        out += ocr_reading.read(model, processor, ocr_data.images(chunk), prompts, max_new_tokens, image_mode,
                                batch_size=READ_BATCH)  # fmt: skip
    return out
