"""Whisper's conventions that training and serving share, so a speech model is decoded the same way in both.

- **Language codes** (``whisper_language``): every code Whisper has a language token for (``yue``, ``haw``
  included), its language names (``english``, ``cantonese``), and the ISO 639-1 codes ingest writes where
  Whisper spells them differently (``jv`` -> ``jw``, ``nb`` -> ``no``) or the deprecated ones (``iw``, ``in``,
  ``ji``, ``mo``); a region tag (``en-US``) counts as its language.
- **The transcript budget** (``max_new_tokens``): greedy decoding stops after half the decoder's positions,
  as Whisper's own decoding does. A run's evaluations and the registry's ``Transcribe`` use the same budget, so
  the WER a run reports is the WER its model's transcripts have.

transformers' tables are imported when first used: this module is cheap to import.
"""

from __future__ import annotations

# ISO 639-1 codes (and deprecated ones) Whisper spells differently.
ISO_TO_WHISPER = {"jv": "jw", "nb": "no", "iw": "he", "in": "id", "ji": "yi", "mo": "ro", "fil": "tl"}


def whisper_languages() -> dict[str, str]:
    """Whisper's language codes and their names (transformers' table)."""
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    return dict(LANGUAGES)


def whisper_language(code: str) -> str:
    """The Whisper code of a language code or name; ValueError naming the accepted codes when it has none."""
    from transformers.models.whisper.tokenization_whisper import TO_LANGUAGE_CODE

    value = code.strip().lower().replace("_", "-")
    languages = whisper_languages()
    for candidate in (value, value.split("-", 1)[0]):
        candidate = ISO_TO_WHISPER.get(candidate, candidate)
        if candidate in languages:
            return candidate
        if candidate in TO_LANGUAGE_CODE:
            return str(TO_LANGUAGE_CODE[candidate])
    raise ValueError(
        f"{code[:40]!r} is not a language Whisper transcribes: give one of its codes ({', '.join(sorted(languages))})"
    )


def max_new_tokens(max_target_positions: int) -> int:
    """The most tokens one transcript may have: half the decoder's positions."""
    return max(1, int(max_target_positions) // 2)
