"""Speech-recognition datasets: every rule of the manifest, the uploads, the WAV headers and the languages.

WAV files are built here: with the standard library's ``wave`` module (PCM), by
hand (float, extensible, broken and lying headers), and as real speech from
``espeak-ng`` when it is installed (a tone otherwise). Hostile files go through
``tests/bounded.py`` in a fresh interpreter, each within 5 s and 300 MiB.
"""

from __future__ import annotations

import array
import bz2
import gzip
import io
import json
import lzma
import math
import shutil
import struct
import subprocess
import tarfile
import wave
import zipfile
from pathlib import Path
from typing import Any

import pytest
from bounded import run_bounded

from services.ingest import asr, languages, wav
from services.ingest.asr import AsrLimits, validate_asr

GUID_TAIL = bytes.fromhex("000000001000800000aa00389b71")


# --- building WAV files -------------------------------------------------------------------------------------------


def pcm_wav(seconds: float = 0.5, rate: int = 16000, channels: int = 1, width: int = 2, silent: bool = False) -> bytes:
    """A tone (or silence) written by the standard library's wave module; width is bytes per sample."""
    frames = int(seconds * rate)
    if silent:
        data = bytes(frames * channels * width)
    else:
        peak = 2 ** (8 * width - 1) - 1
        samples = [int(peak * 0.3 * math.sin(2 * math.pi * 440 * i / rate)) for i in range(frames)]
        if width == 1:
            data = bytes((s >> 0) + 128 for s in samples for _ in range(channels))
        else:
            data = b"".join(s.to_bytes(width, "little", signed=True) for s in samples for _ in range(channels))
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(data)
    return out.getvalue()


def chunk(chunk_id: bytes, data: bytes, declared: int | None = None) -> bytes:
    size = len(data) if declared is None else declared
    return chunk_id + struct.pack("<I", size) + data + (b"\0" if len(data) % 2 else b"")


def riff(*chunks: bytes, riff_size: int | None = None, form: bytes = b"WAVE") -> bytes:
    body = form + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body) if riff_size is None else riff_size) + body


def fmt(tag: int = 1, channels: int = 1, rate: int = 16000, bits: int = 16, align: int | None = None) -> bytes:
    block = channels * bits // 8 if align is None else align
    return chunk(b"fmt ", struct.pack("<HHIIHH", tag, channels, rate, rate * block, block, bits))


def extensible(sub_tag: int, channels: int = 2, rate: int = 48000, bits: int = 24, tail: bytes = GUID_TAIL) -> bytes:
    block = channels * bits // 8
    base = struct.pack("<HHIIHH", 0xFFFE, channels, rate, rate * block, block, bits)
    return chunk(b"fmt ", base + struct.pack("<HHI", 22, bits, 3) + struct.pack("<H", sub_tag) + tail)


def float_wav(seconds: float = 0.25, rate: int = 22050) -> bytes:
    samples = array.array("f", (0.25 * math.sin(2 * math.pi * 220 * i / rate) for i in range(int(seconds * rate))))
    return riff(fmt(3, 1, rate, 32), chunk(b"data", samples.tobytes()))


def speech_wav(path: Path, text: str) -> Path:
    """Real speech from espeak-ng when installed, else a one-second tone."""
    if shutil.which("espeak-ng"):
        subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True, timeout=60)
    else:
        path.write_bytes(pcm_wav(1.0))
    return path


# --- running the validator ----------------------------------------------------------------------------------------


def manifest(*rows: Any) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows)


def write_files(tmp_path: Path, files: dict[str, bytes]) -> dict[str, Path]:
    folder = tmp_path / "audio"
    folder.mkdir(exist_ok=True)
    paths = {}
    for name, data in files.items():
        (folder / name).write_bytes(data)
        paths[name] = folder / name
    return paths


def check(tmp_path: Path, rows: list[Any], files: dict[str, bytes], **kwargs: Any) -> tuple[Any, list[dict]]:
    return validate_asr(io.BytesIO(manifest(*rows)), write_files(tmp_path, files), **kwargs)


def found(report: Any) -> list[tuple[int, str, str, str]]:
    return [(v.line, v.field, v.code, v.entry) for v in report.violations]


def warned(report: Any) -> list[tuple[int, str, str, str]]:
    return [(v.line, v.field, v.code, v.entry) for v in report.warnings]


def one_clip(tmp_path: Path, data: bytes, name: str = "a.wav") -> Any:
    report, _ = check(tmp_path, [{"audio": name, "text": "hello there", "language": "en"}], {name: data})
    return report


# --- a good dataset -----------------------------------------------------------------------------------------------


def test_every_supported_encoding_is_read_with_its_format_rate_channels_and_duration(tmp_path):
    files = {
        "u8.wav": pcm_wav(0.5, 8000, 1, 1),
        "s16.wav": pcm_wav(1.0, 16000, 2, 2),
        "s24.wav": pcm_wav(0.25, 44100, 1, 3),
        "s32.wav": pcm_wav(0.5, 48000, 2, 4),
        "f32.wav": float_wav(0.25, 22050),
        "ext24.wav": riff(extensible(1, 2, 48000, 24), chunk(b"data", bytes(6 * 4800))),
        "extf32.wav": riff(extensible(3, 1, 16000, 32), chunk(b"LIST", b"INFOjunk!"), chunk(b"data", bytes(4 * 1600))),
    }
    rows = [{"audio": name, "text": "hello there, how are you today", "language": "en"} for name in files]
    report, out = check(tmp_path, rows, files)
    assert report.valid, report.to_json()
    got = {r["audio"]: (r["sample_format"], r["sample_rate"], r["channels"], r["duration_s"]) for r in out}
    assert got == {
        "u8.wav": ("pcm8", 8000, 1, 0.5),
        "s16.wav": ("pcm16", 16000, 2, 1.0),
        "s24.wav": ("pcm24", 44100, 1, pytest.approx(0.25, abs=1e-4)),
        "s32.wav": ("pcm32", 48000, 2, 0.5),
        "f32.wav": ("float32", 22050, 1, pytest.approx(0.25, abs=1e-4)),
        "ext24.wav": ("pcm24", 48000, 2, 0.1),
        "extf32.wav": ("float32", 16000, 1, 0.1),
    }
    assert [r["audio"] for r in out] == list(files)
    assert all(r["language"] == "en" and r["language_source"] == "manifest" for r in out)


def test_real_speech_duration_matches_the_wave_module(tmp_path):
    path = speech_wav(tmp_path / "speech.wav", "The quick brown fox jumps over the lazy dog.")
    with wave.open(str(path)) as w:
        expected = w.getnframes() / w.getframerate()
        rate = w.getframerate()
    info = wav.read_header(path)
    assert info.duration_s == pytest.approx(expected) and info.sample_rate == rate and info.sample_format == "pcm16"
    report, out = validate_asr(io.BytesIO(manifest({"audio": "speech.wav", "text": "The quick brown fox"})),
                               {"speech.wav": path})  # fmt: skip
    assert report.valid and out[0]["duration_s"] == pytest.approx(expected, abs=1e-5)


def test_field_names_match_in_any_case_and_language_is_folded_to_lower_case(tmp_path):
    report, out = check(tmp_path, [{"Audio": "a.wav", "TEXT": "bonjour", "Language": "FR"}], {"a.wav": pcm_wav()})
    assert report.valid
    assert out == [{"audio": "a.wav", "text": "bonjour", "language": "fr", "language_source": "manifest",
                    "duration_s": 0.5, "sample_rate": 16000, "channels": 1, "sample_format": "pcm16"}]  # fmt: skip


# --- manifest rows ------------------------------------------------------------------------------------------------


def test_extra_fields_are_warned_and_alternate_names_say_what_to_rename(tmp_path):
    rows = [
        {"audio": "a.wav", "text": "hello there", "language": "en", "speaker": "s1"},
        {"audio_filepath": "b.wav", "text": "hello there", "language": "en"},
    ]
    report, _ = check(tmp_path, rows, {"a.wav": pcm_wav(), "b.wav": pcm_wav()})
    assert (2, "audio", "missing_field", "") in found(report)
    assert "rename 'audio_filepath' to 'audio'" in report.violations[0].hint
    assert warned(report)[:2] == [(1, "speaker", "unknown_field", ""), (2, "audio_filepath", "unknown_field", "")]


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({"audio": "a.wav"}, (1, "text", "missing_field", "")),
        ({"audio": "a.wav", "text": "  "}, (1, "text", "empty_field", "")),
        ({"audio": "a.wav", "text": 5}, (1, "text", "wrong_type", "")),
        ({"audio": ["a.wav"], "text": "hi"}, (1, "audio", "wrong_type", "")),  # so a.wav is unreferenced too
        ({"audio": "", "text": "hi"}, (1, "audio", "empty_field", "")),  # so a.wav is unreferenced too
        ({"audio": "a.wav", "text": "hi", "language": 7}, (1, "language", "wrong_type", "")),
    ],
)
def test_each_row_needs_an_audio_name_and_a_transcript(tmp_path, row, expected):
    report, _ = check(tmp_path, [row], {"a.wav": pcm_wav()})
    unreferenced = [(0, "audio", "unreferenced_audio", "a.wav")] if expected[1] == "audio" else []
    assert found(report) == [expected, *unreferenced]


def test_unreadable_manifest_lines_are_reported_by_the_jsonl_reader(tmp_path):
    rows: list[Any] = [b"\xff\xfe not utf-8", b"[1, 2]", {"audio": "a.wav", "text": "hi there", "language": "en"}]
    report, _ = check(tmp_path, rows, {"a.wav": pcm_wav()})
    assert [(v.line, v.code) for v in report.violations] == [(1, "invalid_encoding"), (2, "not_an_object")]


def test_an_empty_manifest_and_no_uploads_are_refused(tmp_path):
    report, _ = check(tmp_path, [b"", b"   "], {"a.wav": pcm_wav()})
    assert ("empty_manifest" in report.counts) and not report.valid
    report, _ = validate_asr(io.BytesIO(manifest({"audio": "a.wav", "text": "hi", "language": "en"})), {})
    assert found(report) == [(0, "audio", "no_audio_files", "")]


# --- the manifest against the uploads ----------------------------------------------------------------------------


def test_rows_and_uploads_must_match_one_to_one(tmp_path):
    rows = [
        {"audio": "a.wav", "text": "one", "language": "en"},
        {"audio": "clips/B.WAV", "text": "two", "language": "en"},
        {"audio": "a.wav", "text": "one again", "language": "en"},
        {"audio": "nothing.wav", "text": "three", "language": "en"},
    ]
    report, _ = check(tmp_path, rows, {"a.wav": pcm_wav(), "b.wav": pcm_wav(), "extra.wav": pcm_wav()})
    assert found(report) == [
        (2, "audio", "missing_audio", "clips/B.WAV"),
        (4, "audio", "missing_audio", "nothing.wav"),
        (0, "audio", "unreferenced_audio", "b.wav"),
        (0, "audio", "unreferenced_audio", "extra.wav"),
    ]
    assert report.violations[0].hint == "did you mean 'b.wav'?"
    assert warned(report) == [(3, "audio", "duplicate_audio_reference", "a.wav")]
    assert "line 1" in report.warnings[0].message


# --- what an upload holds -----------------------------------------------------------------------------------------


def _zip() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("a.wav", pcm_wav())
    return out.getvalue()


def _tar() -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as t:
        data = pcm_wav()
        member = tarfile.TarInfo("a.wav")
        member.size = len(data)
        t.addfile(member, io.BytesIO(data))
    return out.getvalue()


ARCHIVES = {
    "zip": _zip,
    "tar": _tar,
    "gzip": lambda: gzip.compress(pcm_wav()),
    "bzip2": lambda: bz2.compress(pcm_wav()),
    "xz": lambda: lzma.compress(pcm_wav()),
    "7z": lambda: b"7z\xbc\xaf\x27\x1c\x00\x04" + bytes(200),
    "rar": lambda: b"Rar!\x1a\x07\x01\x00" + bytes(200),
}


@pytest.mark.parametrize("kind", list(ARCHIVES))
def test_archives_are_refused_by_content_whatever_their_name(tmp_path, kind):
    report = one_clip(tmp_path, ARCHIVES[kind](), name="clips.wav")
    assert found(report) == [(1, "audio", "archive_not_allowed", "clips.wav")]
    assert "upload the .wav files themselves" in report.violations[0].hint


@pytest.mark.parametrize(
    ("data", "code", "words"),
    [
        (b"", "not_wav", "empty"),
        (b"just some text, not audio at all", "not_wav", "no RIFF header"),
        (b"fLaC\x00\x00\x00\x22" + bytes(60), "not_wav", "FLAC"),
        (b"ID3\x04\x00" + bytes(60), "not_wav", "MP3"),
        (riff(chunk(b"VP8 ", bytes(20)), form=b"WEBP"), "not_wav", "WEBP"),
        (pcm_wav()[:10], "invalid_wav_header", "12-byte RIFF header"),
        (pcm_wav()[:30], "invalid_wav_header", "ends inside its header"),
        (riff(chunk(b"data", bytes(32)), fmt()), "invalid_wav_header", "before any 'fmt '"),
        (riff(fmt()), "invalid_wav_header", "no 'data' chunk"),
        (riff(chunk(b"LIST", bytes(4))), "invalid_wav_header", "no 'fmt ' chunk"),
        (riff(fmt(channels=0, align=2), chunk(b"data", bytes(32))), "invalid_wav_header", "0 channels"),
        (riff(fmt(rate=0), chunk(b"data", bytes(32))), "invalid_wav_header", "0 Hz"),
        (riff(fmt(align=3), chunk(b"data", bytes(32))), "invalid_wav_header", "block align"),
        (riff(chunk(b"fmt ", bytes(12)), chunk(b"data", bytes(32))), "invalid_wav_header", "at least 16"),
        (riff(fmt()) + b"\x00\x01\x02\x03" + struct.pack("<I", 2) + b"ab", "invalid_wav_header", "chunk id"),
        (riff(*[chunk(b"junk", b"")] * (wav.MAX_CHUNKS + 1), fmt()), "invalid_wav_header", "chunks"),
        (riff(fmt(tag=7, bits=8), chunk(b"data", bytes(32))), "unsupported_audio_format", "mu-law"),
        (riff(fmt(tag=2, bits=4, align=256), chunk(b"data", bytes(512))), "unsupported_audio_format", "ADPCM"),
        (riff(fmt(bits=12, align=2), chunk(b"data", bytes(32))), "unsupported_audio_format", "12-bit PCM"),
        (riff(fmt(tag=3, bits=16), chunk(b"data", bytes(32))), "unsupported_audio_format", "16-bit float"),
        (riff(extensible(1, tail=bytes(14)), chunk(b"data", bytes(60))), "unsupported_audio_format", "sub-format"),
        (b"RF64" + bytes(60), "unsupported_audio_format", "RF64"),
        (b"RIFX" + bytes(60), "unsupported_audio_format", "RIFX"),
        (riff(fmt(rate=100), chunk(b"data", bytes(32))), "unsupported_sample_rate", "100 Hz"),
        (riff(fmt(), chunk(b"data", bytes(32)), riff_size=10_000), "declared_size_exceeds_data", "RIFF header"),
        (riff(fmt(), chunk(b"data", bytes(32), declared=2**32 - 1)), "declared_size_exceeds_data", "'data' chunk"),
        (riff(chunk(b"fmt ", bytes(16), declared=4000)), "declared_size_exceeds_data", "'fmt ' chunk"),
        (riff(fmt(), chunk(b"data", b"")), "empty_audio", "no audio"),
        (riff(fmt(channels=2, bits=24), chunk(b"data", bytes(5))), "empty_audio", "no audio"),
    ],
)
def test_every_unusable_wav_gets_its_own_code(tmp_path, data, code, words):
    report = one_clip(tmp_path, data)
    assert found(report) == [(1, "audio", code, "a.wav")]
    assert words in report.violations[0].message and report.violations[0].hint


def test_clips_over_the_limit_are_flagged_with_their_length_and_the_limit_and_the_dataset_stays_valid(tmp_path):
    files = {"long.wav": pcm_wav(31, 8000, 1, 1, silent=True), "ok.wav": pcm_wav(29.9, 8000, 1, 1, silent=True)}
    rows = [{"audio": name, "text": "a long story", "language": "en"} for name in files]
    report, out = check(tmp_path, rows, files)
    assert report.valid and not report.violations
    assert warned(report) == [(1, "audio", "oversized_clip", "long.wav")]
    message = report.warnings[0].message
    assert "31.0 s" in message and "limit of 30 s" in message and "split the clip" in report.warnings[0].hint
    assert report.warning_counts["oversized_clip"] == 1
    assert {r["audio"]: r["duration_s"] for r in out} == {"long.wav": 31.0, "ok.wav": 29.9}
    report, out = check(tmp_path, rows, files, limits=AsrLimits(max_clip_seconds=60))
    assert report.valid and out[0]["duration_s"] == 31.0


# --- languages ----------------------------------------------------------------------------------------------------

SAYINGS = {
    "en": "The weather is lovely today, so we are going for a long walk in the park.",
    "fr": "Il fait très beau aujourd'hui, alors nous allons faire une longue promenade dans le parc.",
    "de": "Das Wetter ist heute herrlich, also machen wir einen langen Spaziergang im Park.",
    "es": "Hoy hace un tiempo estupendo, así que vamos a dar un largo paseo por el parque.",
}


def test_rows_without_a_language_get_the_one_detected_from_their_transcript(tmp_path):
    files = {f"{code}.wav": pcm_wav() for code in SAYINGS}
    rows = [{"audio": f"{code}.wav", "text": text} for code, text in SAYINGS.items()]
    report, out = check(tmp_path, rows, files)
    assert report.valid and not report.warnings
    assert [(r["language"], r["language_source"]) for r in out] == [(code, "detected") for code in SAYINGS]


def test_a_row_language_wins_over_detection_and_the_dataset_language_wins_over_both(tmp_path):
    files = {"fr.wav": pcm_wav(), "de.wav": pcm_wav()}
    rows = [{"audio": "fr.wav", "text": SAYINGS["fr"], "language": "it"}, {"audio": "de.wav", "text": SAYINGS["de"]}]
    report, out = check(tmp_path, rows, files)
    assert report.valid and [(r["language"], r["language_source"]) for r in out] == [
        ("it", "manifest"), ("de", "detected")]  # fmt: skip
    rows[0]["language"] = "not a language"
    report, out = check(tmp_path, rows, files, language="PT")
    assert report.valid and [(r["language"], r["language_source"]) for r in out] == [("pt", "override")] * 2


@pytest.mark.parametrize(
    ("value", "hint"),
    [("xx", "two-letter ISO 639-1 code"), ("english", "'en'"), ("en-US", "'en'"), ("deu", "'de'"), ("iw", "'he'")],
)
def test_codes_other_than_iso_639_1_are_refused_with_the_likely_code(tmp_path, value, hint):
    report, _ = check(tmp_path, [{"audio": "a.wav", "text": "hello there", "language": value}], {"a.wav": pcm_wav()})
    assert found(report) == [(1, "language", "unknown_language", "")] and hint in report.violations[0].hint
    report, _ = check(tmp_path, [{"audio": "a.wav", "text": "hello there"}], {"a.wav": pcm_wav()}, language=value)
    assert found(report) == [(0, "language", "unknown_language", "")] and hint in report.violations[0].hint


def test_unsure_detection_and_languages_whisper_lacks_are_warnings(tmp_path):
    rows = [{"audio": "a.wav", "text": "ok"}, {"audio": "b.wav", "text": "Mi ne komprenas.", "language": "vo"}]
    report, out = check(tmp_path, rows, {"a.wav": pcm_wav(), "b.wav": pcm_wav()})
    assert report.valid and out[1]["language"] == "vo"
    assert warned(report) == [(1, "text", "uncertain_language", ""), (2, "language", "language_unknown_to_whisper", "")]


def test_the_code_set_is_iso_639_1_and_whisper_languages_are_within_it():
    assert len(languages.ISO_639_1) == 184 and all(len(c) == 2 and c.islower() for c in languages.ISO_639_1)
    assert {"en", "fr", "de", "es", "zh", "he", "jv", "sh"} <= set(languages.ISO_639_1)
    assert "iw" not in languages.ISO_639_1 and languages.WHISPER.issubset(languages.ISO_639_1)
    assert languages.normalise(" EN ") == "en" and languages.normalise("eng") is None
    assert languages.likely_code("pt_BR") == "pt" and languages.likely_code("klingon") is None


# --- hostile inputs, each in a fresh interpreter within bounds ---------------------------------------------------


def hostile(tmp_path: Path, data: bytes, rows: bytes | None = None) -> tuple[str, str]:
    folder = tmp_path / "hostile"
    folder.mkdir()
    (folder / "a.wav").write_bytes(data)
    (tmp_path / "manifest.jsonl").write_bytes(rows or manifest({"audio": "a.wav", "text": "hello", "language": "en"}))
    return str(tmp_path / "manifest.jsonl"), str(folder)


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (riff(fmt(), chunk(b"data", bytes(36), declared=2**32 - 2)), "declared_size_exceeds_data"),
        (_zip(), "archive_not_allowed"),
        (_tar(), "archive_not_allowed"),
        (pcm_wav()[:100], "declared_size_exceeds_data"),
        (pcm_wav()[:20], "invalid_wav_header"),
    ],
    ids=["lying_header", "zip_as_wav", "tar_as_wav", "truncated_data", "truncated_header"],
)
def test_hostile_audio_is_refused_within_bounds(tmp_path, data, code):
    result = run_bounded("services.ingest.asr:codes_of", *hostile(tmp_path, data))
    assert result.value == [code] and result.within_bounds(), result


def test_a_huge_sparse_wav_is_judged_by_its_header_alone(tmp_path):
    folder = tmp_path / "hostile"
    folder.mkdir()
    size = 3 * 2**30
    with (folder / "a.wav").open("wb") as f:
        f.write(riff(fmt(), chunk(b"data", b"", declared=size - 44), riff_size=size - 8))
        f.truncate(size)
    (tmp_path / "m.jsonl").write_bytes(manifest({"audio": "a.wav", "text": "hello", "language": "en"}))
    result = run_bounded("services.ingest.asr:codes_of", str(tmp_path / "m.jsonl"), str(folder))
    assert result.value == ["oversized_clip"] and result.within_bounds(), result


def test_a_hostile_manifest_is_refused_within_bounds(tmp_path):
    rows = b'{"audio": "a.wav", "text": "\xff\xfe"}\n{"audio": "a.wav", "text": "' + b"x" * (9 * 2**20) + b'"}\n'
    result = run_bounded("services.ingest.asr:codes_of", *hostile(tmp_path, pcm_wav(), rows))
    assert result.value == ["invalid_encoding", "line_too_long", "unreferenced_audio"], result
    assert result.within_bounds(), result


def test_archive_kind_reads_content_not_names():
    assert asr.archive_kind(_zip()[:512]) == "ZIP" and asr.archive_kind(_tar()[:512]) == "tar"
    assert asr.archive_kind(pcm_wav()[:512]) == ""
