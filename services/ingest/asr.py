"""Speech-recognition datasets: a manifest JSONL checked against the uploaded .wav files.

Each manifest row (see the training page's "Speech recognition") holds:

- ``audio``: the name of an uploaded .wav file (required);
- ``text``: the target transcript (required, non-empty);
- ``language``: an ISO 639-1 code, any case (optional).

Field names match case-insensitively; other fields are ignored with an
``unknown_field`` warning (naming the field to rename to for common alternates
such as ``audio_filepath``, ``transcript`` or ``locale``).

Every row's language comes from, in order: the dataset-wide ``language``
override, the row's own ``language``, or detection from the transcript
(``language_source`` says which). A code that is not ISO 639-1 is refused
(``unknown_language``, with the likely code in the hint); a valid code Whisper
has no token for is a warning (``language_unknown_to_whisper``), as is a
detection it is unsure of (``uncertain_language``).

The manifest is checked against the uploads: a row naming a file not uploaded
(``missing_audio``), an upload no row names (``unreferenced_audio``), a file
named by two rows (``duplicate_audio_reference``, a warning). Every upload is
checked by content, never by name: archives are refused (``archive_not_allowed``);
the WAV header must be sound and supported (codes in ``wav.py``); a clip longer
than ``max_clip_seconds`` is flagged, not refused (``oversized_clip``, a warning
naming its line and file): Whisper trains on 30-second windows, so runs leave such
clips out (their canonical row keeps ``duration_s`` to tell them by). An empty
manifest (``empty_manifest``) or no uploads at all (``no_audio_files``) are
refused too. Only headers are read, so each file costs bounded time and memory
whatever its size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from services.common.reports import Report
from services.ingest import jsonl, languages, wav

FIELDS = ("audio", "text", "language")
ALTERNATES = {
    "audio_filepath": "audio", "audio_path": "audio", "path": "audio", "file": "audio", "filename": "audio",
    "file_name": "audio", "wav": "audio", "transcript": "text", "transcription": "text", "sentence": "text",
    "normalized_text": "text", "lang": "language", "locale": "language",
}  # fmt: skip
UNCERTAIN_BELOW = 0.5
_HEAD_BYTES = 512
# (offset, magic, name): archives recognised by content, whatever the file is called.
_ARCHIVES = (
    (0, b"PK\x03\x04", "ZIP"), (0, b"PK\x05\x06", "ZIP"), (0, b"PK\x07\x08", "ZIP"), (0, b"\x1f\x8b", "gzip"),
    (0, b"7z\xbc\xaf\x27\x1c", "7z"), (0, b"\xfd7zXZ\x00", "xz"), (0, b"Rar!\x1a\x07", "RAR"),
    (0, b"\x28\xb5\x2f\xfd", "zstd"), (257, b"ustar", "tar"),
)  # fmt: skip
_LANGUAGE_HINT = "use a two-letter ISO 639-1 code such as 'en', 'fr' or 'de'"


@dataclass(frozen=True)
class AsrLimits:
    max_clip_seconds: float = 30.0
    max_line_bytes: int = jsonl.MAX_LINE_BYTES


@dataclass(frozen=True)
class _Row:
    audio: str
    text: str
    language: str
    source: str  # manifest, override, detected


def validate_asr(
    manifest: IO[bytes], audio: dict[str, Path], *, language: str = "", limits: AsrLimits = AsrLimits()
) -> tuple[Report, list[dict[str, Any]]]:
    """The report and, per readable manifest row whose clip is usable, its canonical row (use them when valid).

    ``audio`` maps each uploaded file's name (as manifest rows name it) to its local path;
    ``language`` is a dataset-wide ISO 639-1 override, "" for none.
    """
    report = Report()
    override = _override(language, report)
    rows: list[_Row] = []
    first_line: dict[str, int] = {}
    near = _near_names(audio)
    for line, obj in jsonl.read_objects(manifest, report, limits.max_line_bytes):
        name, row = _row(line, obj, override, report)
        if row is not None:
            rows.append(row)
        if name is None:
            continue
        if name in first_line:
            report.warn(line, "audio", "duplicate_audio_reference",
                        f"{name!r} is already named on line {first_line[name]}",
                        "give each clip one row, unless the repeat is intended", entry=name)  # fmt: skip
            continue
        first_line[name] = line
        if audio and name not in audio:
            guess = near.get(name.lower()) or near.get(_basename(name).lower())
            hint = f"did you mean {guess!r}?" if guess else "upload the file, or fix the name in the row"
            report.add(line, "audio", "missing_audio", f"the row names {name!r}, which was not uploaded", hint,
                       entry=name)  # fmt: skip
    if report.rows == 0:
        report.add(0, "", "empty_manifest", "the manifest has no rows",
                   "write one JSON object per clip: {\"audio\": ..., \"text\": ..., \"language\": ...}")  # fmt: skip
    if not audio:
        report.add(0, "audio", "no_audio_files", "no audio files were uploaded",
                   "upload the .wav files the manifest names along with it")  # fmt: skip
    clips = {name: _check_clip(name, path, first_line.get(name, 0), limits, report) for name, path in audio.items()}
    for name in audio:
        if name not in first_line:
            report.add(0, "audio", "unreferenced_audio", f"{name!r} was uploaded but no manifest row names it",
                       "add a row for it to the manifest, or leave it out of the upload", entry=name)  # fmt: skip
    return report, [_canonical(row, info) for row in rows if (info := clips.get(row.audio)) is not None]


def codes_of(manifest_path: str, audio_dir: str, language: str = "") -> list[str]:
    """Sorted codes of every violation and warning, for a manifest and every file in ``audio_dir`` (hostile tests)."""
    audio = {p.name: p for p in sorted(Path(audio_dir).iterdir()) if p.is_file()}
    with open(manifest_path, "rb") as manifest:
        report, _ = validate_asr(manifest, audio, language=language)
    return sorted(set(report.counts) | set(report.warning_counts))


def archive_kind(head: bytes) -> str:
    """The archive format a file's first 512 bytes show (ZIP, tar, gzip, 7z, ...), or ""."""
    for offset, magic, name in _ARCHIVES:
        if head[offset : offset + len(magic)] == magic:
            return name
    if head[:3] == b"BZh" and head[3:4].isdigit():
        return "bzip2"
    return ""


def _override(language: str, report: Report) -> str:
    if not language.strip():
        return ""
    code = languages.normalise(language)
    if code is None:
        _unknown_language(0, language, "the dataset language", report)
        return ""
    _check_whisper_knows(0, code, report)
    return code


def _row(line: int, obj: dict[str, Any], override: str, report: Report) -> tuple[str | None, _Row | None]:
    """The audio name the row references (None when unusable) and the row (None after reporting why not)."""
    for key in obj:
        if key not in FIELDS:
            wanted = ALTERNATES.get(key)
            hint = f"rename {key!r} to {wanted!r}" if wanted else "remove it; rows hold audio, text and language"
            report.warn(line, key, "unknown_field", f"{key!r} is not a manifest field; it is ignored", hint)
    name = _required_text(line, obj, "audio", report)
    text = _required_text(line, obj, "text", report)
    own = obj.get("language")
    code, source = "", "detected"
    if override:
        code, source = override, "override"
    elif own is not None and not isinstance(own, str):
        report.add(line, "language", "wrong_type", f"'language' must be a string, not {type(own).__name__}",
                   _LANGUAGE_HINT)  # fmt: skip
        return name, None
    elif own and own.strip():
        found = languages.normalise(own)
        if found is None:
            _unknown_language(line, own, "the row's language", report)
            return name, None
        _check_whisper_knows(line, found, report)
        code, source = found, "manifest"
    if name is None or text is None:
        return name, None
    if not code:
        code, confidence = languages.detect(text)
        if confidence < UNCERTAIN_BELOW:
            report.warn(line, "text", "uncertain_language",
                        f"the transcript's language was detected as {code!r} with confidence {confidence:.2f}",
                        "set 'language' on the row, or a language for the whole dataset")  # fmt: skip
    return name, _Row(name, text, code, source)


def _required_text(line: int, obj: dict[str, Any], field: str, report: Report) -> str | None:
    value = obj.get(field)
    if value is None:
        alternate = next((key for key in obj if ALTERNATES.get(key) == field), None)
        hint = f"rename {alternate!r} to {field!r}" if alternate else f"add {field!r}; each row needs audio and text"
        report.add(line, field, "missing_field", f"the row has no {field!r}", hint)
        return None
    if not isinstance(value, str):
        report.add(line, field, "wrong_type", f"{field!r} must be a string, not {type(value).__name__}",
                   f"write {field!r} as text")  # fmt: skip
        return None
    if not value.strip():
        report.add(line, field, "empty_field", f"{field!r} is empty", f"give {field!r} a value")
        return None
    return value


def _unknown_language(line: int, value: str, what: str, report: Report) -> None:
    likely = languages.likely_code(value)
    hint = f"use the ISO 639-1 code {likely!r}" if likely else _LANGUAGE_HINT
    report.add(line, "language", "unknown_language", f"{what} {value[:40]!r} is not an ISO 639-1 code", hint)


def _check_whisper_knows(line: int, code: str, report: Report) -> None:
    if code not in languages.WHISPER:
        report.warn(line, "language", "language_unknown_to_whisper",
                    f"Whisper has no language token for {code!r} ({languages.ISO_639_1[code]})",
                    "check the code; if it is right, expect the base model to need more data for it")  # fmt: skip


def _check_clip(name: str, path: Path, line: int, limits: AsrLimits, report: Report) -> wav.WavInfo | None:
    """The clip's header, or None after reporting why it cannot be used."""
    with path.open("rb") as f:
        kind = archive_kind(f.read(_HEAD_BYTES))
        if kind:
            report.add(line, "audio", "archive_not_allowed", f"{name!r} is a {kind} archive, not audio",
                       "upload the .wav files themselves, not an archive of them", entry=name)  # fmt: skip
            return None
        f.seek(0)
        try:
            info = wav.read_stream(f, path.stat().st_size)
        except wav.WavError as err:
            report.add(line, "audio", err.code, f"{name!r}: {err.message}", err.hint, entry=name)
            return None
    if info.duration_s > limits.max_clip_seconds:
        report.warn(line, "audio", "oversized_clip",
                    f"{name!r} is {info.duration_s:.1f} s long, over the limit of {limits.max_clip_seconds:g} s: "
                    "training and evaluation leave it out",
                    f"split the clip into pieces of at most {limits.max_clip_seconds:g} s "
                    "(Whisper trains on 30 s windows), or raise the clip length limit", entry=name)  # fmt: skip
    return info


def _canonical(row: _Row, info: wav.WavInfo) -> dict[str, Any]:
    return {
        "audio": row.audio,
        "text": row.text,
        "language": row.language,
        "language_source": row.source,
        "duration_s": round(info.duration_s, 6),
        "sample_rate": info.sample_rate,
        "channels": info.channels,
        "sample_format": info.sample_format,
    }


def _basename(name: str) -> str:
    return name.replace("\\", "/").rsplit("/", 1)[-1]


def _near_names(audio: dict[str, Path]) -> dict[str, str]:
    """Uploaded names by their lower-case form and by their lower-case base name, for 'did you mean' hints."""
    near: dict[str, str] = {}
    for name in audio:
        near.setdefault(name.lower(), name)
        near.setdefault(_basename(name).lower(), name)
    return near
