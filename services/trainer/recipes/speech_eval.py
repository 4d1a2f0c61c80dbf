"""How the speech recipe scores transcripts (the language codes it accepts: ``services/common/whisper.py``).

- **Normalisation** (``normaliser``): Whisper's ``EnglishTextNormalizer`` for English (with the tokenizer's
  English spelling mapping, where it has one), ``BasicTextNormalizer`` for every other language.
- **Error rates** (``score``): jiwer's WER, or CER for languages written without spaces between words
  (``CER_LANGUAGES``), raw (the texts as they are) and normalised, over all rows and per language. The
  figure a run reports and evaluates on is ``wer``: the normalised error rate of each row's language (its CER
  where that is the measure), over all rows.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

# Languages written without spaces between words: their error rate is CER (characters), not WER.
CER_LANGUAGES = frozenset({"zh", "ja", "th", "lo", "my", "yue", "km", "bo"})


def uses_cer(language: str) -> bool:
    return language in CER_LANGUAGES


def normaliser(language: str, english_spelling: dict[str, str] | None = None) -> Callable[[str], str]:
    """Whisper's English normaliser for English, the basic one for every other language."""
    from transformers.models.whisper.english_normalizer import BasicTextNormalizer, EnglishTextNormalizer

    base = EnglishTextNormalizer(english_spelling or {}) if language == "en" else BasicTextNormalizer()

    def normalise(text: str) -> str:
        return " ".join(base(text).split())  # the basic normaliser leaves spaces where punctuation was

    return normalise


def error_rate(references: Sequence[str], hypotheses: Sequence[str], cer: bool) -> float:
    """jiwer's WER (or CER) over the rows; an empty reference counts as one error per hypothesis word."""
    import jiwer

    refs, hyps = [], []
    for reference, hypothesis in zip(references, hypotheses, strict=True):
        if not reference.strip():  # jiwer refuses empty references: a non-empty answer is all insertions
            refs.append("∅")
            hyps.append(hypothesis.strip() or "∅")
            continue
        refs.append(reference)
        hyps.append(hypothesis if hypothesis.strip() else "")
    if not refs:
        return 0.0
    measure = jiwer.cer if cer else jiwer.wer
    return float(measure(refs, hyps))


def score(
    rows: Sequence[dict[str, Any]], hypotheses: Sequence[str], english_spelling: dict[str, str] | None = None
) -> dict[str, Any]:
    """The error rates of ``hypotheses`` against the rows' ``text`` (each row has its Whisper ``language``):

    ``{"wer", "wer_raw", "cer", "cer_raw", "per_language": {code: {"rows", "measure", "wer"|"cer", "raw"}}}``.
    ``wer`` is the normalised rate, each language by its own measure, over all rows (module docstring); ``cer``
    is the normalised CER over all rows (a figure for every language)."""
    by_language: dict[str, list[int]] = defaultdict(list)
    for index, row in enumerate(rows):
        by_language[row["language"]].append(index)
    normalised_refs, normalised_hyps, raw_refs, raw_hyps = [], [], [], []
    per_language: dict[str, dict[str, Any]] = {}
    errors = total = raw_errors = 0.0
    for language, indices in sorted(by_language.items()):
        norm = normaliser(language, english_spelling)
        refs = [str(rows[i]["text"]) for i in indices]
        hyps = [hypotheses[i] for i in indices]
        n_refs, n_hyps = [norm(r) for r in refs], [norm(h) for h in hyps]
        cer = uses_cer(language)
        measure = "cer" if cer else "wer"
        normalised, raw = error_rate(n_refs, n_hyps, cer), error_rate(refs, hyps, cer)
        per_language[language] = {"rows": len(indices), "measure": measure, measure: normalised, "raw": raw}
        weight = float(sum(max(len(r) if cer else len(r.split()), 1) for r in n_refs))
        errors, raw_errors, total = errors + normalised * weight, raw_errors + raw * weight, total + weight
        normalised_refs += n_refs
        normalised_hyps += n_hyps
        raw_refs += refs
        raw_hyps += hyps
    return {
        "wer": errors / total if total else 0.0,
        "wer_raw": raw_errors / total if total else 0.0,
        "cer": error_rate(normalised_refs, normalised_hyps, cer=True),
        "cer_raw": error_rate(raw_refs, raw_hyps, cer=True),
        "per_language": per_language,
    }


# --- what the model says: the language of a clip, its transcript ---


def detect_languages(model: Any, rows: Sequence[dict[str, Any]], batch_size: int = 8) -> list[tuple[str, float]]:
    """Whisper's own language detection: for each row, the language whose token is the likeliest after the start of
    transcript given the audio, and its probability among the language tokens."""
    import numpy as np
    import torch

    generation = model.generation_config
    lang_to_id: dict[str, int] = dict(getattr(generation, "lang_to_id", None) or {})
    if not lang_to_id:
        raise ValueError("the model's generation config has no lang_to_id: it cannot detect languages")
    codes = [token.strip("<|>") for token in lang_to_id]
    ids = torch.tensor(list(lang_to_id.values()))
    found: list[tuple[str, float]] = []
    parameter = next(model.parameters())
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            feats = torch.from_numpy(np.stack([r["input_features"] for r in chunk])).to(
                parameter.device, parameter.dtype
            )
            decoder = torch.full((len(chunk), 1), int(generation.decoder_start_token_id), device=parameter.device)
            logits = model(input_features=feats, decoder_input_ids=decoder, use_cache=False).logits[:, -1]
            probabilities = torch.softmax(logits[:, ids.to(logits.device)].float(), dim=-1)
            best = probabilities.argmax(-1)
            found += [(codes[int(b)], float(probabilities[n, b])) for n, b in enumerate(best)]
    return found


def transcribe(
    model: Any, tokenizer: Any, rows: Sequence[dict[str, Any]], max_new_tokens: int, batch_size: int = 8
) -> list[str]:
    """Greedy transcripts of the rows, each decoded in its own language with the task ``transcribe`` (set through
    ``generate``'s language and task, as training's label prefix has them), in the rows' order."""
    import numpy as np
    import torch

    texts = [""] * len(rows)
    by_language: dict[str, list[int]] = defaultdict(list)
    for index, row in enumerate(rows):
        by_language[row["language"]].append(index)
    parameter = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for language, indices in by_language.items():
                for start in range(0, len(indices), batch_size):
                    chunk = indices[start : start + batch_size]
                    feats = torch.from_numpy(np.stack([rows[i]["input_features"] for i in chunk]))
                    out = model.generate(
                        input_features=feats.to(parameter.device, parameter.dtype), language=language,
                        task="transcribe", max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                    )  # fmt: skip
                    sequences = out.sequences if hasattr(out, "sequences") else out
                    for i, text in zip(chunk, tokenizer.batch_decode(sequences, skip_special_tokens=True), strict=True):
                        texts[i] = text.strip()
    finally:
        model.train(was_training)
    return texts
