"""WAV headers, read without reading the audio: format, channels, rate and length.

``read_header`` walks the RIFF chunks of a file (seeking past each chunk's body,
reading at most ``MAX_CHUNKS`` chunk headers and 64 bytes of ``fmt ``), so any
file, of any size, is answered in bounded time and memory. It accepts:

- ``fmt `` tag 1 (PCM) with 8, 16, 24 or 32 bits per sample;
- ``fmt `` tag 3 (IEEE float) with 32 or 64 bits;
- ``fmt `` tag 0xFFFE (WAVE_FORMAT_EXTENSIBLE) whose sub-format GUID is PCM or float, as above.

and raises ``WavError`` with one of these codes otherwise:

- ``not_wav``: not a RIFF/WAVE file (the message names FLAC, MP3, Ogg... when it recognises them);
- ``invalid_wav_header``: a header cut short (the file ends before its audio
  and the RIFF size promises more), no ``fmt `` or ``data`` chunk, zero
  channels or sample rate, a block align that does not match the format, an
  unreadable chunk id, too many chunks;
- ``unsupported_audio_format``: a compressed or unusual encoding (ADPCM, mu-law,
  A-law, MP3 in WAV, 12-bit PCM...), and the RF64 and big-endian RIFX variants;
- ``unsupported_sample_rate``: a rate outside 1 kHz .. 768 kHz (a bogus rate
  would also make the clip's duration a lie);
- ``declared_size_exceeds_data``: the RIFF size or a chunk's size promises more
  bytes than the file holds (a lying header, or audio cut short);
- ``empty_audio``: a ``data`` chunk with no whole frame in it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import IO

MAX_CHUNKS = 1000
MIN_RATE = 1_000
MAX_RATE = 768_000

PCM = 1
FLOAT = 3
EXTENSIBLE = 0xFFFE
# KSDATAFORMAT_SUBTYPE_PCM / _IEEE_FLOAT are {0000000X-0000-0010-8000-00AA00389B71}: the tag, then this tail.
_GUID_TAIL = bytes.fromhex("000000001000800000aa00389b71")
_SAMPLE_FORMATS = {(PCM, 8): "pcm8", (PCM, 16): "pcm16", (PCM, 24): "pcm24", (PCM, 32): "pcm32",
                   (FLOAT, 32): "float32", (FLOAT, 64): "float64"}  # fmt: skip
_TAG_NAMES = {2: "Microsoft ADPCM", 6: "A-law", 7: "mu-law", 0x11: "IMA ADPCM", 0x31: "GSM 6.10",
              0x40: "G.721 ADPCM", 0x50: "MPEG audio", 0x55: "MP3", 0x161: "WMA", 0x1610: "AAC"}  # fmt: skip
_CONVERT = "convert it to 16-bit PCM WAV, e.g. ffmpeg -i IN -c:a pcm_s16le OUT.wav"
_LYING = "the file is truncated or its header lies: export the WAV file again"


class WavError(ValueError):
    """Why a file cannot be used as WAV audio: a stable code, a message and a hint."""

    def __init__(self, code: str, message: str, hint: str = _CONVERT) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.hint = hint


@dataclass(frozen=True)
class WavInfo:
    sample_format: str  # pcm8, pcm16, pcm24, pcm32, float32, float64
    channels: int
    sample_rate: int
    bits_per_sample: int
    frames: int

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate


@dataclass(frozen=True)
class _Format:
    sample_format: str
    channels: int
    sample_rate: int
    bits: int
    block_align: int


def read_header(path: Path) -> WavInfo:
    """The format and length of the WAV file at ``path``; raises WavError when it is not usable WAV audio."""
    with path.open("rb") as f:
        return read_stream(f, path.stat().st_size)


def other_audio_kind(head: bytes) -> str:
    """A name for a non-WAV audio file's format from its first bytes, or "" when not recognised."""
    if head.startswith(b"fLaC"):
        return "FLAC"
    if head.startswith(b"OggS"):
        return "Ogg"
    if head.startswith(b"ID3") or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return "MP3"
    if head.startswith(b"FORM") and head[8:12] in (b"AIFF", b"AIFC"):
        return "AIFF"
    if head[4:8] == b"ftyp":
        return "MP4/M4A"
    if head.startswith(b"\x1aE\xdf\xa3"):
        return "WebM/Matroska"
    return ""


def read_stream(f: IO[bytes], size: int) -> WavInfo:
    """As ``read_header``, for an open binary file of ``size`` bytes."""
    head = f.read(12)
    riff_end = _check_riff(head, size)
    fmt: _Format | None = None
    pos = 12
    for _ in range(MAX_CHUNKS):
        if pos + 8 > size:
            _truncated_header(riff_end, size)
            missing = "fmt " if fmt is None else "data"
            raise WavError("invalid_wav_header", f"the file has no {missing!r} chunk", _CONVERT)
        f.seek(pos)
        chunk_id, chunk_size = struct.unpack("<4sI", f.read(8))
        if not all(32 <= b < 127 for b in chunk_id):
            raise WavError("invalid_wav_header", f"unreadable chunk id {chunk_id!r} at byte {pos}", _CONVERT)
        name = chunk_id.decode("ascii")
        body = pos + 8
        if body + chunk_size > size:
            if name != "data":
                _truncated_header(riff_end, size)
            raise WavError("declared_size_exceeds_data",
                           f"the {name!r} chunk declares {chunk_size} bytes but only {size - body} follow it",
                           _LYING)  # fmt: skip
        if name == "data":
            return _audio(fmt, chunk_size, riff_end, size)
        if name == "fmt " and fmt is None:
            fmt = _parse_fmt(f.read(min(chunk_size, 64)), chunk_size)
        pos = body + chunk_size + (chunk_size & 1)
    raise WavError("invalid_wav_header", f"more than {MAX_CHUNKS} chunks come before the audio data", _CONVERT)


def _check_riff(head: bytes, size: int) -> int:
    """Where the RIFF header says the file ends; raises WavError when it is not a RIFF/WAVE file."""
    if size == 0:
        raise WavError("not_wav", "the file is empty", "upload the .wav file itself")
    if head[:4] in (b"RF64", b"BW64"):
        raise WavError("unsupported_audio_format", "RF64 (64-bit size) WAV files are not supported",
                       "split the recording into clips, each a plain WAV file")  # fmt: skip
    if head[:4] == b"RIFX":
        raise WavError("unsupported_audio_format", "big-endian (RIFX) WAV files are not supported", _CONVERT)
    if head[:4] != b"RIFF":
        kind = other_audio_kind(head)
        what = f"a {kind} file" if kind else "not a WAV file (no RIFF header)"
        raise WavError("not_wav", f"the file is {what}", _CONVERT)
    if len(head) < 12:
        raise WavError("invalid_wav_header", f"the file ends inside its 12-byte RIFF header ({size} bytes)", _CONVERT)
    riff_size, form = struct.unpack("<I4s", head[4:12])
    if form != b"WAVE":
        raise WavError("not_wav", f"the file is a RIFF file of type {form!r}, not WAVE", _CONVERT)
    return 8 + int(riff_size)


def _truncated_header(riff_end: int, size: int) -> None:
    """A file that ends before its audio while its RIFF header promises more was cut inside its header."""
    if riff_end > size:
        raise WavError("invalid_wav_header", f"the file ends inside its header: it holds {size} bytes, "
                       f"its RIFF header declares {riff_end}", "upload the whole file; it was cut short")  # fmt: skip


def _audio(fmt: _Format | None, data_size: int, riff_end: int, size: int) -> WavInfo:
    if fmt is None:
        raise WavError("invalid_wav_header", "the 'data' chunk comes before any 'fmt ' chunk", _CONVERT)
    if riff_end > size:
        raise WavError("declared_size_exceeds_data",
                       f"the RIFF header declares {riff_end} bytes but the file holds {size}", _LYING)  # fmt: skip
    frames = data_size // fmt.block_align
    if frames == 0:
        raise WavError("empty_audio", "the file holds no audio (its 'data' chunk has no whole frame)",
                       "record or export the clip again, or drop its row")  # fmt: skip
    return WavInfo(fmt.sample_format, fmt.channels, fmt.sample_rate, fmt.bits, frames)


def _parse_fmt(raw: bytes, declared: int) -> _Format:
    if declared < 16 or len(raw) < 16:
        raise WavError("invalid_wav_header", f"the 'fmt ' chunk is {declared} bytes; it needs at least 16", _CONVERT)
    tag, channels, rate, _byte_rate, block_align, bits = struct.unpack_from("<HHIIHH", raw)
    if tag == EXTENSIBLE:
        if len(raw) < 40:
            raise WavError("invalid_wav_header", "an extensible 'fmt ' chunk needs 40 bytes", _CONVERT)
        guid = raw[24:40]
        if guid[2:] != _GUID_TAIL:
            raise WavError("unsupported_audio_format", f"unknown extensible sub-format {guid.hex()}", _CONVERT)
        tag = struct.unpack_from("<H", guid)[0]
    if channels == 0:
        raise WavError("invalid_wav_header", "the header says the audio has 0 channels", _CONVERT)
    if rate == 0:
        raise WavError("invalid_wav_header", "the header says the sample rate is 0 Hz", _CONVERT)
    sample_format = _SAMPLE_FORMATS.get((tag, bits))
    if sample_format is None:
        if tag in (PCM, FLOAT):
            what = f"{bits}-bit {'PCM' if tag == PCM else 'float'}"
        else:
            what = _TAG_NAMES.get(tag, f"format tag 0x{tag:04x}")
        raise WavError("unsupported_audio_format", f"the audio is encoded as {what}; "
                       "accepted: 8/16/24/32-bit PCM and 32/64-bit float", _CONVERT)  # fmt: skip
    if block_align != channels * bits // 8:
        raise WavError("invalid_wav_header", f"block align is {block_align}; {channels} channel(s) of {bits}-bit "
                       f"samples need {channels * bits // 8}", _CONVERT)  # fmt: skip
    if not MIN_RATE <= rate <= MAX_RATE:
        raise WavError("unsupported_sample_rate", f"the sample rate is {rate} Hz; accepted: {MIN_RATE} to {MAX_RATE}",
                       "resample the clip, e.g. to 16000 Hz")  # fmt: skip
    return _Format(sample_format, channels, rate, bits, block_align)
